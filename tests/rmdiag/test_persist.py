"""Persistence: every reward-model kind, an ensemble and a policy predict exactly the same after a
save and a load in a fresh process; bad directories are refused with DataError; saves are atomic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rmdiag import persist
from rmdiag.data import DataError, Interactions, load
from rmdiag.persist import (
    load_ids,
    load_policy,
    load_reward_model,
    save_policy,
    save_reward_model,
)
from rmdiag.rewards import REWARD_MODELS, RewardEnsemble, last_event_split, make_reward_model
from rmdiag.sequences import event_sequences
from rmdiag.simulate import SimulationConfig, World
from trainers.model import ModelConfig, SequentialRecommender
from trainers.protocols import Context

ROOT = Path(__file__).resolve().parents[2]
HISTORY = 10
SMALL = {
    "global_mean": {},
    "user_mean": {},
    "item_mean": {},
    "bias": {},
    "lightgbm": {"n_rounds": 10, "n_threads": 1, "history_len": HISTORY, "embedding_dim": 4},
    "sequence": {"epochs": 1, "dim": 8, "history_len": HISTORY, "batch_size": 64},
}


class Smuggled:
    """A custom object a hostile weights.pt might carry (unpickling it would run code)."""


@pytest.fixture(scope="module")
def log() -> Interactions:
    return load(World(SimulationConfig(n_users=60, n_items=40, seed=0)).generate())


@pytest.fixture(scope="module")
def probe(log: Interactions) -> tuple[Context, torch.Tensor]:
    """(context, items): 24 events' histories and 5 candidates each, one of them unseen."""
    events = log.take(np.arange(0, len(log), len(log) // 24)[:24])
    seqs = event_sequences(log, events, HISTORY)
    context = Context(
        torch.as_tensor(seqs.users, dtype=torch.long),
        torch.as_tensor(seqs.history_items, dtype=torch.long),
        torch.as_tensor(seqs.history_rewards, dtype=torch.float32),
    )
    items = torch.randint(1, log.n_items + 1, (len(context), 5), generator=torch.Generator())
    items[:, 0] = log.n_items + 1  # an id the models never saw
    return context, items


def _policy(n_items: int) -> SequentialRecommender:
    torch.manual_seed(3)
    config = ModelConfig(n_items=n_items, hidden=16, n_blocks=1, n_heads=2, max_len=HISTORY)
    return SequentialRecommender(config).eval()


@pytest.fixture(scope="module")
def saved(log: Interactions, probe, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Every kind, a 2-member ensemble and a policy: fitted, saved; name -> (directory, model)."""
    root = tmp_path_factory.mktemp("saved")
    out: dict[str, tuple[Path, object]] = {}
    for kind in REWARD_MODELS:
        model = make_reward_model(kind, **SMALL[kind]).fit(log)
        out[kind] = (save_reward_model(model, root / kind), model)
    # early stopping on a validation part: the booster keeps its best iteration
    fit, tune = last_event_split(log)
    early = {"early_stopping_rounds": 2, "learning_rate": 0.3, "min_data_in_leaf": 5}
    early = make_reward_model("lightgbm", **{**SMALL["lightgbm"], **early, "n_rounds": 30})
    early.fit(fit, tune)
    assert 0 < early.booster_.best_iteration < 30
    out["lightgbm_early"] = (save_reward_model(early, root / "lightgbm_early"), early)
    ensemble = RewardEnsemble(
        kinds=("bias", "sequence"), n_members=2, params={"sequence": SMALL["sequence"]}
    ).fit(log)
    out["ensemble"] = (save_reward_model(ensemble, root / "ensemble"), ensemble)
    policy = _policy(log.n_items)
    ids = (log.user_ids, log.item_ids)
    out["policy"] = (
        save_policy(policy, root / "policy", algorithm="exp-sft", temperature=0.5, ids=ids),
        policy,
    )
    return out


FRESH = textwrap.dedent(
    """
    import sys, torch
    from rmdiag.persist import load_policy, load_reward_model
    from trainers.protocols import Context
    torch.set_num_threads(1)
    probe, out = sys.argv[1], sys.argv[2]
    p = torch.load(probe, weights_only=True)
    context = Context(p["users"], p["history_items"], p["history_rewards"])
    results = {}
    for name, directory in zip(sys.argv[3::2], sys.argv[4::2]):
        if name == "policy":
            model, meta = load_policy(directory)
            with torch.no_grad():
                results[name] = model(context)
        else:
            model = load_reward_model(directory)
            results[name] = model(context, p["items"])
            if name == "ensemble":
                results["ensemble_members"] = model.members(context, p["items"])
    torch.save(results, out)
    """
)


def test_every_model_predicts_exactly_the_same_in_a_fresh_process(saved, probe, tmp_path) -> None:
    context, items = probe
    probe_file = tmp_path / "probe.pt"
    torch.save(
        {
            "users": context.users,
            "history_items": context.history_items,
            "history_rewards": context.history_rewards,
            "items": items,
        },
        probe_file,
    )
    out = tmp_path / "predictions.pt"
    args = [arg for name, (directory, _) in saved.items() for arg in (name, str(directory))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", FRESH, str(probe_file), str(out), *args],
        check=True,
        env=env,
        timeout=120,
    )
    fresh = torch.load(out, weights_only=True)
    for name, (_, model) in saved.items():
        with torch.no_grad():
            expected = model(context) if name == "policy" else model(context, items)
        assert fresh[name].dtype == expected.dtype, name
        assert torch.equal(fresh[name], expected), name
    ensemble = saved["ensemble"][1]
    assert torch.equal(fresh["ensemble_members"], ensemble.members(context, items))


def test_loaded_models_carry_their_parameters_and_fitted_state(saved) -> None:
    lightgbm = load_reward_model(saved["lightgbm"][0])
    assert lightgbm.n_rounds == 10 and lightgbm.history_len == HISTORY and lightgbm.fitted_
    np.testing.assert_array_equal(lightgbm.item_embeddings_, saved["lightgbm"][1].item_embeddings_)
    assert lightgbm.item_embeddings_.dtype == np.float32
    ensemble = load_reward_model(saved["ensemble"][0])
    assert isinstance(ensemble, RewardEnsemble)
    assert [m.kind for m in ensemble.members_] == ["bias", "sequence"]
    assert ensemble.history_len == HISTORY and ensemble.params == {"sequence": SMALL["sequence"]}
    assert load_ids(saved["ensemble"][0]) is None
    model, meta = load_policy(saved["policy"][0])
    assert not model.training
    assert meta["algorithm"] == "exp-sft" and meta["temperature"] == 0.5
    assert meta["config"]["hidden"] == 16 and meta["version"] == persist.FORMAT_VERSION
    assert meta["ids"] is not None and len(meta["ids"][1]) == model.config.n_items + 1
    # the directory gets the mode an ordinary mkdir would give it, not mkdtemp's 0700
    mode = saved["policy"][0].stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask


def test_ids_round_trip_as_ints_or_strings(saved, log: Interactions, tmp_path) -> None:
    users, items = load_ids(saved["policy"][0])
    np.testing.assert_array_equal(users, log.user_ids)
    assert users.dtype == np.int64 and items.dtype == np.int64
    model = load_reward_model(saved["global_mean"][0])
    raw_users = np.array([None, "alice", "bob"], dtype=object)
    save_reward_model(model, tmp_path / "m", ids=(raw_users, np.array([0, 7, 9])))
    users, items = load_ids(tmp_path / "m")
    assert list(users) == [None, "alice", "bob"] and list(items) == [0, 7, 9]
    assert json.loads((tmp_path / "m" / "ids.json").read_text())["user_ids"][1] == "alice"
    (tmp_path / "m" / "ids.json").write_text('{"user_ids": [null, 3], "item_ids": [0]}')
    _refused(tmp_path / "m", "ids.json", "ints or of strings", load_ids)


def _copy(saved, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(saved[name][0], target)
    return target


def _refused(directory: Path, file: str, why: str, loader=load_reward_model) -> None:
    with pytest.raises(DataError) as error:
        loader(directory)
    message = str(error.value)
    assert str(directory) in message and file in message and why in message, message


@pytest.mark.parametrize("name", ["bias", "ensemble", "policy"])
def test_a_newer_format_version_is_refused(saved, tmp_path, name: str) -> None:
    directory = _copy(saved, name, tmp_path)
    header = directory / "model.json"
    payload = json.loads(header.read_text())
    payload["version"] = persist.FORMAT_VERSION + 1
    header.write_text(json.dumps(payload))
    loader = load_policy if name == "policy" else load_reward_model
    _refused(directory, "model.json", "version", loader)


def test_a_version_bump_in_an_ensemble_member_is_refused(saved, tmp_path) -> None:
    directory = _copy(saved, "ensemble", tmp_path)
    header = directory / "members" / "1" / "model.json"
    header.write_text(header.read_text().replace('"version": 1', '"version": 2'))
    _refused(directory, "members/1/model.json", "version")


@pytest.mark.parametrize("name", ["sequence", "policy"])
def test_a_weights_file_holding_a_pickled_object_is_refused(saved, tmp_path, name: str) -> None:
    directory = _copy(saved, name, tmp_path)
    torch.save({"x": Smuggled()}, directory / "weights.pt")
    loader = load_policy if name == "policy" else load_reward_model
    _refused(directory, "weights.pt", "Smuggled", loader)


def test_an_npz_holding_pickled_object_arrays_is_refused(saved, tmp_path) -> None:
    directory = _copy(saved, "item_mean", tmp_path)
    np.savez(directory / "arrays.npz", means_=np.array([Smuggled(), 1.0], dtype=object))
    _refused(directory, "arrays.npz", "pickled")


@pytest.mark.parametrize(
    ("name", "file", "content", "why"),
    [
        ("lightgbm", "booster.txt", None, "missing file"),
        ("lightgbm", "booster.txt", "not a model", "LightGBM"),
        ("bias", "model.json", "{not json", "JSON"),
        ("bias", "arrays.npz", None, "missing file"),
        ("bias", "arrays.npz", "garbage", "npz"),
        ("sequence", "weights.pt", "garbage", "weights.pt"),
        ("user_mean", "model.json", '{"format": "rmdiag.reward_model", "version": 1}', "kind"),
    ],
)
def test_missing_or_garbled_files_are_refused(saved, tmp_path, name, file, content, why) -> None:
    directory = _copy(saved, name, tmp_path)
    if content is None:
        (directory / file).unlink()
    else:
        (directory / file).write_text(content)
    _refused(directory, file, why)


def test_arrays_of_the_wrong_shape_are_refused(saved, tmp_path) -> None:
    directory = _copy(saved, "user_mean", tmp_path)
    np.savez(directory / "arrays.npz", means_=np.zeros((3, 2), dtype=np.float32))
    _refused(directory, "arrays.npz", "dimensions")


def test_weights_of_another_shape_are_refused(saved, tmp_path) -> None:
    directory = _copy(saved, "policy", tmp_path)
    torch.save(_policy(7).state_dict(), directory / "weights.pt")
    _refused(directory, "weights.pt", "do not fit", load_policy)


def test_a_missing_directory_is_refused(tmp_path) -> None:
    _refused(tmp_path / "nowhere", "nowhere", "no such directory")


def test_a_failed_save_leaves_no_directory_and_no_temp(saved, monkeypatch, tmp_path) -> None:
    model = saved["lightgbm"][1]

    def broken(path: Path, booster) -> None:
        path.write_text("half a model")
        raise OSError("disk full")

    monkeypatch.setattr(persist, "_write_booster", broken)
    with pytest.raises(OSError, match="disk full"):
        save_reward_model(model, tmp_path / "out" / "lightgbm")
    assert list((tmp_path / "out").iterdir()) == []
    # over an existing directory: the old one stays as it was
    existing = save_reward_model(saved["bias"][1], tmp_path / "out" / "bias")
    before = sorted(p.name for p in existing.iterdir())
    monkeypatch.setattr(persist, "_write_arrays", lambda path, arrays: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_reward_model(saved["item_mean"][1], existing)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bias"]
    assert sorted(p.name for p in existing.iterdir()) == before
    assert load_reward_model(existing).kind == "bias"


def test_a_save_replaces_an_existing_directory(saved, tmp_path) -> None:
    target = tmp_path / "model"
    save_reward_model(saved["lightgbm"][1], target)
    save_reward_model(saved["global_mean"][1], target)
    assert sorted(p.name for p in target.iterdir()) == ["model.json"]
    assert load_reward_model(target).kind == "global_mean"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_unfitted_or_unknown_models_are_not_saved(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        save_reward_model(make_reward_model("bias"), tmp_path / "a")

    class Custom(type(make_reward_model("bias"))):
        pass

    with pytest.raises(TypeError, match="cannot save a Custom"):
        save_reward_model(Custom(), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
