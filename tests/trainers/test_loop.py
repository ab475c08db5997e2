import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainers import (
    ALGORITHMS,
    CQLConfig,
    GRPOConfig,
    SequentialRecommender,
    SFTConfig,
    load_checkpoint,
    sequence_data,
    train_grpo,
    train_sft,
)
from trainers.data import TensorData
from trainers.loop import CheckpointMismatch, TrainConfig, learning_rate
from trainers.testing import NoisyEnsemble, ToyWorld, ToyWorldConfig

Make = Callable[..., SequentialRecommender]


class _Interrupt(Exception):
    pass


def _data() -> TensorData:
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 61, (40, 11), generator=generator)
    items[::4, :5] = 0
    return sequence_data(items, torch.rand(items.shape, generator=generator) * 4 + 1)


def _same_weights(a: SequentialRecommender, b: SequentialRecommender) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


# Per algorithm: config overrides (small groups for a 60-item catalog) and the inputs it takes.
# A resumed run gets every input of the original one, its reference policy included.
RESUME_RUNS: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "sft": ({}, ()),
    "rw-bc": ({}, ()),
    "exp-sft": ({"lam": 0.5}, ()),
    "a-sft": ({"beta": 0.5}, ("reward_fn", "reference")),
    "ppo": ({"group_size": 4}, ("reward_fn", "reference")),
    "dpo": ({"n_candidates": 4, "interval_z": 0.5}, ("reward_fn", "reference")),
    "ipo": ({"n_candidates": 4, "interval_z": 0.5}, ("reward_fn", "reference")),
    "cql": ({}, ()),
    "grpo": ({"group_size": 4}, ("reference",)),
}


def test_every_algorithm_is_in_the_resume_test() -> None:
    assert set(RESUME_RUNS) == set(ALGORITHMS)


@pytest.mark.parametrize("name", sorted(RESUME_RUNS))
def test_resume_reproduces_the_uninterrupted_run(name: str, make_model: Make,
                                                 tmp_path: Path) -> None:
    # Dropout on, so the restored RNG state matters too (rollout algorithms turn it off).
    config_class, train = ALGORITHMS[name]
    overrides, input_names = RESUME_RUNS[name]
    settings = dict(lr=3e-3, batch_size=16, max_steps=12, warmup_steps=3, schedule="cosine",
                    progress=False, eval_every=1, **overrides)
    world = ToyWorld(ToyWorldConfig(seed=0))
    available = {"reward_fn": NoisyEnsemble(world.true_reward, 60, noise=0.5),
                 "reference": make_model(seed=7)}
    inputs = {key: available[key] for key in input_names}
    evals = {"n": 0}

    def count(model: torch.nn.Module) -> dict[str, float]:
        evals["n"] += 1
        return {"n": float(evals["n"])}

    whole = make_model(dropout=0.3)
    train(whole, _data(), config_class(**settings), eval_fn=count, **inputs)

    path = tmp_path / "run" / "checkpoint.pt"

    def crash_at_step_8(model: torch.nn.Module) -> dict[str, float]:
        evals["n"] += 1
        if evals["n"] == 8:
            raise _Interrupt
        return {"n": float(evals["n"])}

    evals["n"] = 0
    interrupted = make_model(dropout=0.3)
    config = config_class(**settings, checkpoint_path=str(path), checkpoint_every=5)
    with pytest.raises(_Interrupt):
        train(interrupted, _data(), config, eval_fn=crash_at_step_8, **inputs)
    assert load_checkpoint(path)["step"] == 5
    assert not _same_weights(interrupted, whole)

    evals["n"] = 5
    resumed = make_model(dropout=0.3, seed=123)  # its own init is overwritten by the checkpoint
    result = train(resumed, _data(), config, eval_fn=count, resume_from=path, **inputs)
    assert result.steps == 12 and _same_weights(resumed, whole)
    assert [row["step"] for row in result.history] == [float(s) for s in range(1, 13)]


def test_resuming_without_the_reference_policy_is_refused(make_model: Make,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    config = GRPOConfig(batch_size=16, max_steps=2, group_size=4, checkpoint_path=str(path),
                        progress=False)
    train_grpo(make_model(), _data(), config)
    with pytest.raises(ValueError, match="reference"):
        train_grpo(make_model(seed=3), _data(), config, resume_from=path)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_only_with_log_dir(make_model: Make, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)  # SummaryWriter's default would be ./runs
    settings = dict(lr=3e-3, batch_size=16, max_steps=6, warmup_steps=2, schedule="cosine",
                    eval_every=2, group_size=4, progress=False)

    def score(model: torch.nn.Module) -> dict[str, float]:
        return {"score": float(sum(p.sum() for p in model.parameters()))}

    reference = make_model()
    train_grpo(make_model(), _data(), GRPOConfig(**settings), reference=reference, eval_fn=score)
    assert list(tmp_path.iterdir()) == []  # no log_dir: nothing written anywhere

    log_dir = tmp_path / "tb"
    config = GRPOConfig(**settings, log_dir=str(log_dir))
    result = train_grpo(make_model(), _data(), config, reference=reference, eval_fn=score)
    scalars = _scalars(log_dir)
    assert {"train/loss", "train/lr", "train/kl", "train/clip_fraction", "train/hit_rate",
            "eval/score"} <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 7))
    rates = [value for _, value in scalars["train/lr"]]
    assert rates == pytest.approx([learning_rate(config, s, 6) for s in range(6)])
    assert [step for step, _ in scalars["eval/score"]] == [2, 4, 6]
    assert [v for _, v in scalars["eval/score"]] == pytest.approx(
        [row["score"] for row in result.history])
    kl = [value for _, value in scalars["train/kl"]]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # π starts at π_ref, then moves


def test_tensorboard_after_resume_logs_each_step_once(make_model: Make, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    log_dir, path = tmp_path / "tb", tmp_path / "checkpoint.pt"
    config = SFTConfig(batch_size=16, max_steps=6, eval_every=1, checkpoint_every=3,
                       checkpoint_path=str(path), log_dir=str(log_dir), progress=False)
    calls = {"n": 0}

    def crash_at_step_5(model: torch.nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Interrupt
        return {"n": float(calls["n"])}

    with pytest.raises(_Interrupt):
        train_sft(make_model(), _data(), config, eval_fn=crash_at_step_5)
    train_sft(make_model(), _data(), config, eval_fn=lambda model: {"n": 0.0}, resume_from=path)
    steps = [step for step, _ in _scalars(log_dir)["train/loss"]]
    assert steps == list(range(1, 7))  # steps 4-5 of the crashed run were purged


def test_log_dir_without_tensorboard_is_a_clear_error(make_model: Make, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    config = SFTConfig(batch_size=16, max_steps=2, log_dir=str(tmp_path / "tb"), progress=False)
    with pytest.raises(ImportError, match="pip install"):
        train_sft(make_model(), _data(), config)
    assert not (tmp_path / "tb").exists()


def test_checkpoint_is_plain_and_atomic(make_model: Make, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    model = make_model()
    train_sft(model, _data(), SFTConfig(batch_size=8, max_steps=3, checkpoint_path=str(path),
                                        checkpoint_every=1, progress=False))
    state = torch.load(path, weights_only=True)  # no pickled objects inside
    assert state["step"] == 3 and isinstance(state["config"], dict)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp files left behind
    reloaded = make_model(seed=5)
    reloaded.load_state_dict(state["model"])
    assert _same_weights(reloaded, model)
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling error
        load_checkpoint(tmp_path / "other.pt")


def test_early_stopping_keeps_the_best_weights(make_model: Make) -> None:
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.4, 0.9])
    seen: list[dict[str, torch.Tensor]] = []

    def score(model: torch.nn.Module) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"ndcg": next(scores)}

    model = make_model()
    config = SFTConfig(batch_size=8, max_steps=20, eval_every=1, early_stopping_metric="ndcg",
                       patience=3, progress=False)
    result = train_sft(model, _data(), config, eval_fn=score)
    assert result.stopped_early and result.steps == 5 and result.best_step == 2
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())


def test_max_seconds_and_sft_reduces_loss(make_model: Make) -> None:
    model = make_model()
    data = _data()
    config = SFTConfig(lr=5e-3, batch_size=20, epochs=30, progress=False)

    def nll(policy: torch.nn.Module) -> dict[str, float]:
        from trainers.data import next_item_targets

        assert isinstance(policy, SequentialRecommender)
        with torch.no_grad():
            return {"nll": float(-next_item_targets(policy, data).log_prob.mean())}

    before = nll(model)["nll"]
    result = train_sft(model, data, config, eval_fn=nll)
    assert result.history[-1]["nll"] < before - 1.0
    short = train_sft(make_model(), data, SFTConfig(batch_size=20, epochs=1000, max_seconds=0.5,
                                                    progress=False))
    assert short.steps < 2000 and 0.5 <= short.train_seconds < 5


def test_learning_rate_schedule() -> None:
    config = TrainConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    rates = [learning_rate(config, step, 14) for step in range(14)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * 9 / 10)).item()))
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_bad_training_data_is_refused(make_model: Make) -> None:
    with pytest.raises(ValueError, match="disagree"):
        sequence_data(torch.ones(3, 5, dtype=torch.long), torch.ones(4, 5))
    with pytest.raises(ValueError, match="lacks"):
        train_sft(make_model(), {"targets": torch.ones(3, dtype=torch.long)})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_torchrun_matches_one_process(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "one.pt")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
              "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(_free_port()), str(worker), str(tmp_path / "two.pt")]
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=150)
    assert double.returncode == 0, double.stderr[-3000:]
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert (one["world"], two["world"]) == (1, 2)
    for name in ("sft", "cql", "grpo", "dpo"):
        assert one[name]["steps"] == two[name]["steps"] == 6, name
        moved = max(float((one[name]["state"][k] - v).abs().max())
                    for k, v in one["initial"].items())
        assert moved > 1e-2, name  # the runs trained: agreement is not two untouched inits
        for key, value in two[name]["state"].items():
            assert torch.isfinite(value).all(), (name, key)
    # Deterministic given the data: 1 and 2 ranks agree up to float summation order. (The
    # attention key bias gets an all-but-zero gradient, softmax being invariant to it, which
    # Adam rescales into steps of rounding noise: that is where the ~1e-5 differences sit.)
    for name in ("sft", "cql", "grpo"):
        for key, value in one[name]["state"].items():
            assert torch.allclose(value, two[name]["state"][key], atol=5e-5, rtol=1e-4), (name, key)


def _torchrun(script: Path, *args: str, timeout: float = 150) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
              "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(_free_port()), str(script), *args]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_resume_is_exact(make_model: Make, tmp_path: Path) -> None:
    # Uninterrupted vs checkpointed at step 3, crashed at 5 and resumed by new processes: the
    # same weights bit for bit, which needs each rank to get its own random state back.
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    _torchrun(worker, str(tmp_path / "whole.pt"), str(tmp_path), "first")
    _torchrun(worker, str(tmp_path / "resumed.pt"), str(tmp_path), "resume")
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name in ("sft", "dpo"):
        assert whole[name].keys() == resumed[name].keys()
        for key, value in whole[name].items():
            assert torch.equal(value, resumed[name][key]), (name, key)

    state = load_checkpoint(tmp_path / "sft.pt")  # weights_only: tensors and plain values
    assert state["world_size"] == 2 and state["step"] == 6
    assert len(state["torch_rng"]) == len(state["generator"]) == 2  # type: ignore[arg-type]
    assert not torch.equal(*state["torch_rng"])  # type: ignore[misc]  # the ranks' own states
    # The checkpoint's own config under one process: refused for the world size alone.
    saved = dict(state["config"])  # type: ignore[call-overload]
    assert saved.pop("type") == "SFTConfig"
    with pytest.raises(CheckpointMismatch, match="world size: 2 in the checkpoint, 1 now"):
        train_sft(make_model(), _data(), SFTConfig(**saved), resume_from=tmp_path / "sft.pt")


def test_resume_with_other_settings_is_refused_naming_them(make_model: Make,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    settings = dict(lr=3e-3, batch_size=16, max_steps=4, checkpoint_path=str(path),
                    progress=False)
    train_sft(make_model(), _data(), SFTConfig(**settings))
    with pytest.raises(CheckpointMismatch) as refused:
        changed = settings | {"lr": 1e-3, "seed": 1}
        train_sft(make_model(), _data(), SFTConfig(**changed), resume_from=path)
    assert refused.value.fields == {"lr": (3e-3, 1e-3), "seed": (0, 1)}
    assert "lr: 0.003 in the checkpoint, 0.001 now; seed: 0 in the checkpoint, 1 now" in str(
        refused.value)
    with pytest.raises(CheckpointMismatch, match="type: 'SFTConfig' in the checkpoint, "
                                                 "'CQLConfig' now"):
        ALGORITHMS["cql"][1](make_model(), _data(), CQLConfig(**settings), resume_from=path)
    # What may change: where checkpoints and logs go, how often, the bar, and the length.
    longer = settings | {"checkpoint_path": str(tmp_path / "next.pt"), "checkpoint_every": 2,
                         "progress": True, "max_steps": 6, "max_seconds": 60.0}
    result = train_sft(make_model(), _data(), SFTConfig(**longer), resume_from=path)
    assert result.steps == 6
    # A checkpoint of another format version is refused as such, not misread.
    old = load_checkpoint(path) | {"version": 1}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointMismatch, match="checkpoint version: 1 in the checkpoint"):
        train_sft(make_model(), _data(), SFTConfig(**settings), resume_from=tmp_path / "old.pt")


@pytest.mark.parametrize(("max_steps", "epochs", "batch_size"),
                         [(3, 1.0, 8), (None, 0.6, 8), (None, 2.0, 8), (7, 1.0, 6), (2, 1.0, 64)])
def test_drawn_rows_are_the_rows_the_loop_draws(make_model: Make, max_steps: int | None,
                                                 epochs: float, batch_size: int) -> None:
    """`drawn_rows` (what A-SFT's b(s) is computed on) is exactly the set of rows a run feeds
    its loss: part of an epoch, a fraction, several epochs, a batch larger than the data."""
    from trainers.data import next_item_targets
    from trainers.loop import drawn_rows, train_loop
    from trainers.sft import sft_loss

    data = {**_data(), "users": torch.arange(40)}
    config = SFTConfig(batch_size=batch_size, max_steps=max_steps, epochs=epochs, seed=3,
                       progress=False)
    seen: list[torch.Tensor] = []

    def recording_loss(module: torch.nn.Module, batch: TensorData,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(batch["users"].clone())
        return sft_loss(next_item_targets(module, batch, 0, None, generator), config)  # type: ignore[arg-type]

    train_loop(make_model(), data, recording_loss, config)
    assert torch.equal(drawn_rows(40, config), torch.cat(seen).unique(sorted=True))
    assert drawn_rows(0, config).numel() == 0
