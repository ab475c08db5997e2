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
    Figure,
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
# enough to measure RMSE on (150-200 events under leave-last-out).
FAST = AuditConfig(
    kinds="lightgbm",
    n_members=3,
    lightgbm_rounds=100,
    n_resamples=500,
    threads=1,
    min_count=40,
)
WORLD_SIZE = {"n_users": 1000, "n_items": 300, "mean_events": 30, "seed": 0}
# Held out under randomized exposure: 10 random items per user, so the unexplored slice (~40%
# of them) has the within-user pairs pairwise accuracy needs. Under leave-last-out (two held-out
# events per user) it has a dozen, too few to measure: no evidence of generalization.
RANDOM_ITEMS_PER_USER = 10


def _world_audit(
    preset: str, config: AuditConfig = FAST, *, randomized: bool = False, **overrides: float
):
    world = World(SimulationConfig.preset(preset, **{**WORLD_SIZE, **overrides}))
    holdout = world.randomized_exposure(RANDOM_ITEMS_PER_USER, seed=1) if randomized else None
    train, heldout = audit_inputs(world.generate(), holdout)
    return audit(train, heldout, config=config)


@pytest.fixture(scope="module")
def learnable():
    return _world_audit("learnable", randomized=True)


@pytest.fixture(scope="module")
def learnable_last_out():
    return _world_audit("learnable")


@pytest.fixture(scope="module")
def noise():
    return _world_audit("item_mean_noise")


@pytest.fixture(scope="module")
def directional():
    # The shipped `directional` preset's ensemble orders a user's items no better than item_mean
    # and bias (significantly worse under randomized exposure): not directional by the rule.
    # Here its taste is fully learnable and stronger: the ensemble orders a user's items better
    # than bias, but not on its large rarely-exposed tail (the unexplored slice).
    return _world_audit("directional", randomized=True, observable_share=1.0, affinity_scale=1.0)


def _entry(result, baseline: str, slice_name: str, metric: str):
    return next(
        c
        for c in result.comparisons
        if c["model"] == "ensemble"
        and c["baseline"] == baseline
        and c["slice"] == slice_name
        and c["metric"] == metric
    )


# ---- verdicts on worlds with known structure --------------------------------------------------


def test_learnable_world_generalizes(learnable) -> None:
    judgement = judge(learnable)
    assert judgement.verdict == "generalizes", judgement.reasons
    assert learnable.models["ensemble"]["unexplored"]["rmse"].available
    assert learnable.models["ensemble"]["unexplored"]["pairwise_accuracy"].available
    # the reasons cite the figures they rest on, and the evidence holds those figures
    assert any("Holm-adjusted p" in reason for reason in judgement.reasons)
    bias = judgement.evidence["unexplored.pairwise_accuracy.ensemble-bias"]
    entry = _entry(learnable, "bias", "unexplored", "pairwise_accuracy")
    assert bias == entry["difference"].as_dict() | {
        "p_value": entry["p_value"],
        "p_adjusted": entry["p_adjusted"],
    }
    assert bias["low"] > 0 and bias["p_adjusted"] < 0.05


def test_too_small_unexplored_slice_is_no_evidence(learnable_last_out) -> None:
    """The same world under leave-last-out: the unexplored slice has too few within-user pairs
    to measure ordering there, so the verdict cannot be `generalizes` however good the rest."""
    judgement = judge(learnable_last_out)
    assert judgement.verdict == "directional", judgement.reasons
    assert any("too small to measure" in reason for reason in judgement.reasons)
    for baseline in ("item_mean", "bias"):
        entry = _entry(learnable_last_out, baseline, "all", "pairwise_accuracy")
        assert entry["p_adjusted"] < 0.05 and entry["difference"].low > 0


def test_item_means_plus_noise_is_unreliable_and_nothing_beats_item_mean(noise) -> None:
    judgement = judge(noise)
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
    judgement = judge(directional)
    assert judgement.verdict == "directional", judgement.reasons
    ensemble = directional.models["ensemble"]["all"]
    assert ensemble["pairwise_accuracy"].low > 0.5  # orders a user's events better than chance
    for baseline in ("item_mean", "bias"):  # and better than the baselines that order at all
        entry = _entry(directional, baseline, "all", "pairwise_accuracy")
        assert entry["p_adjusted"] < 0.05 and entry["difference"].low > 0
    # but not where the log rarely looked: it does not order the unexplored slice better
    bias = _entry(directional, "bias", "unexplored", "pairwise_accuracy")
    assert not (bias["p_adjusted"] < 0.05 and bias["difference"].value > 0)


def test_verdict_thresholds_are_configurable(learnable) -> None:
    strict = SelectConfig(min_rmse_gain=10.0)
    judgement = verdict_from(learnable.models, learnable.comparisons, strict)
    assert judgement.verdict != "generalizes" and judgement.reasons
    demanding = SelectConfig(directional_baselines="bias")
    judgement = verdict_from(learnable.models, learnable.comparisons, demanding)
    assert judgement.verdict == "generalizes"


# ---- the rule on hand-made figures --------------------------------------------------------------

GOOD = {"rmse": Figure(-0.2, -0.3, -0.1), "pairwise_accuracy": Figure(0.1, 0.05, 0.15)}


def _hand_made(changes=None, *, model: str = "ensemble"):
    """(models, comparisons) in which ``model`` beats every baseline on every slice and metric
    (Holm-adjusted p = 0.001); ``changes`` maps (baseline, slice, metric) -> (difference,
    p_adjusted) to override, ``None`` for an unmeasured comparison."""
    changes = changes or {}
    comparisons = []
    for baseline in ("global_mean", "user_mean", "item_mean", "bias"):
        for slice_name in SLICES:
            for metric in METRICS:
                figure = GOOD.get(metric, Figure(-0.1, -0.2, -0.05))
                p = 0.001
                key = (baseline, slice_name, metric)
                if key in changes:
                    figure, p = changes[key] or (Figure.unavailable("too few pairs"), None)
                comparisons.append(
                    {
                        "model": model,
                        "baseline": baseline,
                        "slice": slice_name,
                        "metric": metric,
                        "difference": figure,
                        "p_value": p,
                        "p_adjusted": p,
                    }
                )
    level = {"rmse": Figure(0.9, 0.85, 0.95), "pairwise_accuracy": Figure(0.7, 0.65, 0.75)}
    models = {model: {slice_name: dict(level) for slice_name in SLICES}}
    return models, comparisons


def _unexplored_unmeasured(metric: str = "pairwise_accuracy"):
    return {
        (b, "unexplored", metric): None for b in ("global_mean", "user_mean", "item_mean", "bias")
    }


def test_rule_beating_everything_everywhere_generalizes() -> None:
    judgement = verdict_from(*_hand_made())
    assert judgement.verdict == "generalizes", judgement.reasons
    assert judgement.evidence["unexplored.rmse.ensemble-bias"] == {
        "value": -0.2,
        "low": -0.3,
        "high": -0.1,
        "p_value": 0.001,
        "p_adjusted": 0.001,
    }
    assert judgement.evidence["all.rmse.ensemble"] == {"value": 0.9, "low": 0.85, "high": 0.95}
    assert len(judgement.evidence) == 4 + 4 * 2 * 2  # own figures + every comparison read
    json.dumps(judgement.to_json(), allow_nan=False)


@pytest.mark.parametrize("metric", ["pairwise_accuracy", "rmse"])
def test_rule_too_small_unexplored_slice_never_generalizes(metric: str) -> None:
    judgement = verdict_from(*_hand_made(_unexplored_unmeasured(metric)))
    assert judgement.verdict == "directional", judgement.reasons
    assert any("too small to measure" in reason for reason in judgement.reasons)
    # whatever the thresholds
    lenient = SelectConfig(alpha=0.5, directional_baselines="")
    assert verdict_from(*_hand_made(_unexplored_unmeasured(metric)), lenient).verdict != (
        "generalizes"
    )


def test_rule_ordering_no_better_than_bias_does_not_generalize() -> None:
    # the default world's ensemble: far better level, ordering +0.005 over bias with p = 1
    changes = {("bias", "all", "pairwise_accuracy"): (Figure(0.005, -0.009, 0.02), 1.0)}
    judgement = verdict_from(*_hand_made(changes))
    assert judgement.verdict == "unreliable", judgement.reasons
    assert any("bias" in reason and "order" in reason for reason in judgement.reasons)
    # reading DESIGN's "better than item-mean/bias" as item_mean alone makes it directional
    judgement = verdict_from(*_hand_made(changes), SelectConfig(directional_baselines="item_mean"))
    assert judgement.verdict == "directional"


def test_rule_unexplored_slice_must_be_beaten_not_merely_matched() -> None:
    changes = {("bias", "unexplored", "rmse"): (Figure(-0.01, -0.08, 0.06), 0.9)}
    assert verdict_from(*_hand_made(changes)).verdict == "directional"
    changes = {("item_mean", "unexplored", "pairwise_accuracy"): (Figure(0.02, -0.03, 0.07), 0.4)}
    assert verdict_from(*_hand_made(changes)).verdict == "directional"


def test_rule_level_not_beaten_is_directional_when_ordering_is() -> None:
    changes = {("bias", "all", "rmse"): (Figure(-0.003, -0.01, 0.005), 0.98)}
    judgement = verdict_from(*_hand_made(changes))
    assert judgement.verdict == "directional", judgement.reasons
    assert any("not significantly lower than that of bias" in r for r in judgement.reasons)


def test_rule_significant_in_the_wrong_direction_or_below_the_gain_is_not_a_win() -> None:
    worse = {("user_mean", "all", "pairwise_accuracy"): (Figure(-0.1, -0.15, -0.05), 0.001)}
    assert verdict_from(*_hand_made(worse)).verdict == "unreliable"  # below chance
    assert verdict_from(*_hand_made(), SelectConfig(min_pairwise_gain=0.2)).verdict == "unreliable"
    assert verdict_from(*_hand_made(), SelectConfig(min_rmse_gain=0.25)).verdict == "directional"
    assert verdict_from(*_hand_made(), SelectConfig(alpha=0.0005)).verdict == "unreliable"


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
    payload = audit_json(learnable, judge(learnable))
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


def test_too_small_slice_gives_null_with_reason(learnable_last_out) -> None:
    # the unexplored slice has ~170 events but only a dozen users with two of them
    figure = learnable_last_out.models["ensemble"]["unexplored"]["pairwise_accuracy"]
    assert figure.value is None and "needed" in figure.reason
    assert (
        learnable_last_out.to_json()["models"]["ensemble"]["unexplored"]["pairwise_accuracy"][
            "value"
        ]
        is None
    )


def test_rmse_interval_is_the_event_level_rmse(learnable) -> None:
    # every slice, including the unexplored one where users hold unequal numbers of events
    reward = learnable.events["reward"]
    unexplored = learnable.events["unexplored"]
    counts = np.unique(learnable.events["user"][unexplored], return_counts=True)[1]
    assert counts.min() < counts.max()
    for name, prediction in learnable.predictions.items():
        for slice_name, rows in (("all", slice(None)), ("unexplored", unexplored)):
            error = prediction[rows] - reward[rows]
            figures = learnable.models[name][slice_name]
            assert figures["rmse"].value == pytest.approx(math.sqrt(np.mean(error**2)))
            assert figures["mae"].value == pytest.approx(np.mean(np.abs(error)))
            assert figures["rmse"].low <= figures["rmse"].value <= figures["rmse"].high
    for c in learnable.comparisons:
        if c["metric"] != "rmse":
            continue
        rows = unexplored if c["slice"] == "unexplored" else slice(None)
        model, baseline = (learnable.predictions[c[k]][rows] for k in ("model", "baseline"))
        expected = math.sqrt(np.mean((model - reward[rows]) ** 2)) - math.sqrt(
            np.mean((baseline - reward[rows]) ** 2)
        )
        assert c["difference"].value == pytest.approx(expected, abs=1e-12)


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
    assert page.count("data:image/png;base64,") == 4  # three error plots and the reliability curve
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
    assert perfect.value == pytest.approx(1.0)
    assert constant.value == pytest.approx(0.5)
    assert reversed_.value == pytest.approx(0.0)
    np.testing.assert_array_equal(constant.denominator, 2.0)  # pairs per user
    np.testing.assert_array_equal(constant.numerator, 1.0)  # two ties, half each


def test_the_audit_uses_the_one_figure_class_of_evaluators() -> None:
    import evaluators.intervals

    assert Figure is evaluators.intervals.Figure
    assert Figure.unavailable("why").as_dict() == {
        "value": None, "low": None, "high": None, "reason": "why"
    }


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
