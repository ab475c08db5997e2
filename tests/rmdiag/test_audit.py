"""The audit: verdicts on simulated worlds with known structure, the JSON contract, the report,
refusal of data that cannot be audited, and the pieces (pairs, pairwise accuracy) by hand."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag.audit import (
    METRICS,
    SLICES,
    AuditConfig,
    InsufficientDataError,
    audit,
    audit_inputs,
    within_user_pairs,
)
from rmdiag.audit.metrics import Slice, per_user_metrics
from rmdiag.data import DataError, load
from rmdiag.report import audit_json, write_audit
from rmdiag.select import VERDICTS, SelectConfig, judge, verdict_from
from rmdiag.simulate import SimulationConfig, World

# Small, fast audits: LightGBM members only (the sequence RM is covered by test_rewards and by
# the mixed-kind audit below), fewer trees and resamples than the defaults.
# min_count 40 (items seen < 40 times in ~27k training events) makes the unexplored slice big
# enough to measure RMSE on (150-200 events), and the verdict must then hold there too.
FAST = AuditConfig(
    kinds="lightgbm",
    n_members=3,
    lightgbm_rounds=100,
    n_resamples=500,
    threads=1,
    min_count=40,
)
SELECT = SelectConfig(require_unexplored=True)
WORLD_SIZE = {"n_users": 1000, "n_items": 300, "mean_events": 30, "seed": 0}


def _world_audit(preset: str, config: AuditConfig = FAST, **overrides: float):
    world = World(SimulationConfig.preset(preset, **{**WORLD_SIZE, **overrides}))
    train, heldout = audit_inputs(world.generate())
    return audit(train, heldout, config=config)


@pytest.fixture(scope="module")
def learnable():
    return _world_audit("learnable")


@pytest.fixture(scope="module")
def noise():
    return _world_audit("item_mean_noise")


@pytest.fixture(scope="module")
def directional():
    # the preset as shipped: 30% of a weak taste is learnable, the rest hidden under noise
    return _world_audit("directional")


# ---- verdicts on worlds with known structure --------------------------------------------------


def test_learnable_world_generalizes(learnable) -> None:
    judgement = judge(learnable, SELECT)
    assert judgement.verdict == "generalizes", judgement.reasons
    assert learnable.models["ensemble"]["unexplored"]["rmse"].available
    # the reasons cite the figures they rest on
    assert any("Holm-adjusted p" in reason for reason in judgement.reasons)


def test_item_means_plus_noise_is_unreliable_and_nothing_beats_item_mean(noise) -> None:
    judgement = judge(noise, SELECT)
    assert judgement.verdict == "unreliable", judgement.reasons
    for entry in noise.comparisons:
        if entry["baseline"] == "item_mean" and entry["p_adjusted"] is not None:
            assert not (
                entry["p_adjusted"] < 0.05
                and entry["metric"] != "pairwise_accuracy"
                and entry["difference"].value < 0
            ), entry
            assert not (
                entry["p_adjusted"] < 0.05
                and entry["metric"] == "pairwise_accuracy"
                and entry["difference"].value > 0
            ), entry


def test_world_in_between_is_directional(directional) -> None:
    judgement = judge(directional, SELECT)
    assert judgement.verdict == "directional", judgement.reasons
    ensemble = directional.models["ensemble"]["all"]
    assert ensemble["pairwise_accuracy"].low > 0.5  # orders a user's events better than chance
    bias = next(
        c
        for c in directional.comparisons
        if c["model"] == "ensemble"
        and c["baseline"] == "bias"
        and c["slice"] == "all"
        and c["metric"] == "rmse"
    )
    assert not bias["p_adjusted"] < 0.05  # but its error is not below the additive baseline's


def test_verdict_thresholds_are_configurable(learnable) -> None:
    strict = dataclasses.replace(SELECT, min_rmse_gain=10.0)
    judgement = verdict_from(learnable.models, learnable.comparisons, strict)
    assert judgement.verdict != "generalizes" and judgement.reasons
    demanding = dataclasses.replace(SELECT, directional_baselines="bias")
    judgement = verdict_from(learnable.models, learnable.comparisons, demanding)
    assert judgement.verdict == "generalizes"


# ---- the output contract ------------------------------------------------------------------------


def _figures(payload):
    if isinstance(payload, dict):
        if set(payload) >= {"value", "low", "high"}:
            yield payload
        else:
            for value in payload.values():
                yield from _figures(value)
    elif isinstance(payload, list):
        for value in payload:
            yield from _figures(value)


def test_audit_json_has_the_contract_keys_and_no_nan(learnable) -> None:
    payload = audit_json(learnable, judge(learnable, SELECT))
    text = json.dumps(payload, allow_nan=False)  # raises on NaN/inf
    assert payload["verdict"] in VERDICTS
    for name in ("global_mean", "user_mean", "item_mean", "bias", "lightgbm", "ensemble"):
        for slice_name in SLICES:
            for metric in METRICS:
                figure = payload["models"][name][slice_name][metric]
                assert set(figure) >= {"value", "low", "high"}
    for figure in _figures(payload):
        if figure["value"] is None:
            assert figure["reason"]  # an unavailable figure always says why
        else:
            assert figure["low"] <= figure["value"] <= figure["high"]
    comparisons = payload["comparisons"]
    assert len(comparisons) == 2 * 4 * len(SLICES) * len(METRICS)  # (lightgbm, ensemble) x 4
    for c in comparisons:
        assert set(c) >= {
            "model",
            "baseline",
            "slice",
            "metric",
            "difference",
            "p_value",
            "p_adjusted",
        }
        if c["p_value"] is not None:
            assert 0 <= c["p_value"] <= c["p_adjusted"] <= 1
    assert "NaN" not in text


def test_too_small_slice_gives_null_with_reason(learnable) -> None:
    # the unexplored slice has ~170 events but only a dozen users with two of them
    figure = learnable.models["ensemble"]["unexplored"]["pairwise_accuracy"]
    assert figure.value is None and "needed" in figure.reason
    assert (
        learnable.to_json()["models"]["ensemble"]["unexplored"]["pairwise_accuracy"]["value"]
        is None
    )


def test_rmse_interval_is_the_event_level_rmse(learnable) -> None:
    reward = learnable.events["reward"]
    for name, prediction in learnable.predictions.items():
        rmse = math.sqrt(np.mean((prediction - reward) ** 2))
        assert learnable.models[name]["all"]["rmse"].value == pytest.approx(rmse)
        mae = np.mean(np.abs(prediction - reward))
        assert learnable.models[name]["all"]["mae"].value == pytest.approx(mae)


def test_write_audit_writes_both_files_and_escapes_user_strings(tmp_path: Path) -> None:
    world = World(SimulationConfig.preset("learnable", n_users=150, n_items=60, mean_events=15))
    evil = tmp_path / "<img src=x onerror=alert(1)>&.csv"
    pacsv.write_csv(world.generate(), evil)
    train, heldout = audit_inputs(evil)
    config = AuditConfig(
        kinds="lightgbm,sequence",
        n_members=2,
        lightgbm_rounds=30,
        sequence_epochs=2,
        sequence_dim=16,
        n_resamples=200,
        min_users=5,
        threads=1,
    )
    result = audit(train, heldout, config=config)
    out = tmp_path / "out"
    write_audit(result, judge(result), out)
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "audit.json"]
    page = (out / "audit.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;&amp;.csv" in page
    assert page.count("data:image/png;base64,") == 3
    payload = json.loads((out / "audit.json").read_text())
    assert {"lightgbm", "sequence", "ensemble"} <= set(payload["models"])


def test_failed_write_leaves_nothing(learnable, tmp_path: Path, monkeypatch) -> None:
    import rmdiag.report.audit_output

    def broken(result, judgement):
        raise RuntimeError("render failed")

    monkeypatch.setattr(rmdiag.report.audit_output, "render_audit_html", broken)
    with pytest.raises(RuntimeError):
        write_audit(learnable, judge(learnable), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- inputs --------------------------------------------------------------------------------------


def _table(users, items, rewards):
    n = len(users)
    return pa.table(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": list(range(n)),
            "reward": [float(r) for r in rewards],
        }
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table([1, 1, 2, 2], [1, 2, 1, 2], [1, 2, 3, 4]), "no held-out events"),
        (_table([1] * 4 + [2] * 4, [1] * 8, [1, 2, 3, 4] * 2), "at least 2"),
        (_table([1] * 4 + [2] * 4, [1, 2, 3, 4] * 2, [3] * 8), "nothing to predict"),
    ],
    ids=["too-few-events-per-user", "one-item", "constant-rewards"],
)
def test_data_that_cannot_support_an_audit_is_refused(table: pa.Table, message: str) -> None:
    with pytest.raises(InsufficientDataError, match=message) as error:
        audit_inputs(table)
    assert isinstance(error.value, DataError)  # the CLI maps DataError to exit code 2


def test_too_few_users_for_intervals_is_refused() -> None:
    rng = np.random.default_rng(0)
    table = _table(
        np.repeat(np.arange(6), 5).tolist(),
        rng.integers(1, 8, 30).tolist(),
        rng.integers(1, 6, 30).tolist(),
    )
    with pytest.raises(InsufficientDataError, match="6 users have held-out events"):
        audit(*audit_inputs(table), config=FAST)


def test_holdout_file_is_encoded_with_the_log(tmp_path: Path) -> None:
    world = World(SimulationConfig.preset("learnable", n_users=80, n_items=50, mean_events=10))
    log, holdout = world.generate(), world.randomized_exposure(3, seed=1)
    train, heldout = audit_inputs(log, holdout)
    assert len(train) == log.num_rows and len(heldout) == holdout.num_rows
    assert heldout.user_ids is train.user_ids
    raw_users = train.decode_users(heldout.users)
    np.testing.assert_array_equal(np.sort(raw_users), np.sort(holdout.column("user_id").to_numpy()))


# ---- the pieces ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5), max_size=30))
def test_within_user_pairs_are_all_pairs_of_one_user(raw: list[int]) -> None:
    users = np.sort(np.array(raw, dtype=np.int64))
    first, second = within_user_pairs(users)
    expected = {
        (i, j) for i in range(len(users)) for j in range(i + 1, len(users)) if users[i] == users[j]
    }
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected
    assert len(first) == len(expected)


def test_pairwise_accuracy_counts_ties_half_and_skips_equal_rewards() -> None:
    users = np.repeat(np.arange(30), 3)
    rewards = np.tile([1.0, 3.0, 3.0], 30)  # per user: 2 usable pairs, 1 pair with equal rewards
    piece = Slice.build("all", np.arange(90), users, rewards)
    config = AuditConfig(min_users=2, min_pairs=1)
    perfect = per_user_metrics(rewards, rewards, piece, config)["pairwise_accuracy"]
    constant = per_user_metrics(np.zeros(90), rewards, piece, config)["pairwise_accuracy"]
    reversed_ = per_user_metrics(-rewards, rewards, piece, config)["pairwise_accuracy"]
    assert perfect.mean() == pytest.approx(1.0)
    assert constant.mean() == pytest.approx(0.5)
    assert reversed_.mean() == pytest.approx(0.0)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="kinds"):
        AuditConfig(kinds="bias")
    with pytest.raises(ValueError, match="directional_baselines"):
        SelectConfig(directional_baselines="oracle")
    with pytest.raises(ValueError, match="alpha"):
        SelectConfig(alpha=1.5)
    for f in (*dataclasses.fields(AuditConfig), *dataclasses.fields(SelectConfig)):
        assert f.metadata.get("help"), f.name  # every field documents its CLI flag


def test_audit_of_a_loaded_file_is_deterministic(tmp_path: Path) -> None:
    world = World(SimulationConfig.preset("directional", n_users=120, n_items=40, mean_events=12))
    path = tmp_path / "log.parquet"
    import pyarrow.parquet as pq

    pq.write_table(world.generate(), path)
    config = AuditConfig(
        kinds="lightgbm", n_members=2, lightgbm_rounds=20, n_resamples=200, min_users=5, threads=1
    )
    first = audit(*audit_inputs(path), config=config).to_json()
    second = audit(*audit_inputs(load(path)), config=config).to_json()
    for payload in (first, second):
        payload.pop("seconds"), payload.pop("timings"), payload["data"].pop("source")
    assert first == second
