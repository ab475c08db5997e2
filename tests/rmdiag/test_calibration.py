"""Calibration, exposure shift, leave-last-k-out and the detectable difference: on simulated
worlds whose answer is known, and each piece against a slow reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators.intervals import ratio_interval
from rmdiag.audit import AuditConfig, audit, audit_inputs
from rmdiag.audit.calibration import auc, calibration, is_binary, quantile_bins, shift
from rmdiag.audit.metrics import Slice
from rmdiag.audit.statistics import detectable_difference
from rmdiag.cli import main
from rmdiag.data import encode, validate
from rmdiag.select import judge
from rmdiag.simulate import SimulationConfig, World
from rmdiag.split import last_events_out, leave_last_out

FAST = AuditConfig(kinds="lightgbm", n_members=2, lightgbm_rounds=40, n_resamples=400,
                   threads=1)
WORLD = {"n_users": 500, "n_items": 150, "mean_events": 20, "seed": 0}


@pytest.fixture(scope="module")
def world() -> World:
    return World(SimulationConfig(**WORLD))


def test_a_reward_model_shifted_by_half_has_mean_error_half(world: World) -> None:
    table = world.generate(with_expected=True)
    train, heldout = audit_inputs(table.drop_columns(["expected_reward"]))
    rows = heldout.table.column("row").to_numpy()
    expected = table.column("expected_reward").to_numpy()[rows]
    result = audit(train, heldout, config=FAST,
                   external_predictions={"shifted": expected + 0.5, "exact": expected})
    shifted = result.calibration["shifted"]["all"]["mean_error"]
    assert shifted.low <= 0.5 <= shifted.high
    assert shifted.high - shifted.low < 0.2
    exact = result.calibration["exact"]["all"]["mean_error"]
    assert exact.low <= 0.0 <= exact.high
    # the exact model is calibrated bin by bin too: every reliability bin covers its prediction
    bins = result.calibration["exact"]["all"]["reliability"]
    covered = [b["observed"].low <= b["predicted"].value <= b["observed"].high for b in bins]
    assert np.mean(covered) >= 0.8
    payload = result.to_json()
    assert set(payload["calibration"]["shifted"]["all"]) >= {"mean_error", "ece", "reliability"}
    assert "log_loss" not in payload["calibration"]["shifted"]["all"]  # ratings are not binary


def test_randomized_exposure_holdout_shows_the_shift_and_the_verdict_names_it(
    world: World,
) -> None:
    holdout = world.randomized_exposure(6, seed=1)
    train, heldout = audit_inputs(world.generate(), holdout)
    result = audit(train, heldout, config=FAST, heldout_exposure="random")
    figure = result.shift["heldout_minus_train"]
    assert figure.high < 0  # random items rate lower than the ones the log chose
    assert result.slices["unexplored"]["events"] == result.slices["all"]["events"]
    reasons = [r for r in judge(result).reasons if "shift" in r]
    assert len(reasons) == 1 and figure.text() in reasons[0]
    assert judge(result).evidence["shift.heldout_minus_train"]["value"] == figure.value


def _slice(users: np.ndarray) -> Slice:
    order = np.argsort(users, kind="stable")
    users = users[order]
    return Slice.build("all", np.arange(len(users)), users, np.zeros(len(users)))


@st.composite
def _events(draw, binary: bool = False):
    n_users = draw(st.integers(2, 8))
    counts = draw(st.lists(st.integers(1, 6), min_size=n_users, max_size=n_users))
    users = np.repeat(np.arange(n_users), counts)
    n = len(users)
    # few distinct predictions: ties in bins and in the AUC
    pred = np.array(draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.9]), min_size=n,
                                  max_size=n)))
    if binary:
        rewards = np.array(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    else:
        rewards = np.array(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)), float)
    return users, pred, rewards


@settings(max_examples=60, deadline=None)
@given(_events(), st.integers(0, 2**16))
def test_mean_error_ece_and_bins_match_their_definitions(events, seed) -> None:
    users, pred, rewards = events
    piece = _slice(users)
    got = calibration(pred, rewards, piece, binary=False, confidence=0.9, n_resamples=200,
                      seed=seed, min_users=2)
    # the value is the event-level mean even with unequal events per user, and the interval is
    # the evaluators' ratio estimator's
    assert got["mean_error"].value == pytest.approx(np.mean(pred - rewards))
    errors = np.bincount(piece.user_index, weights=pred - rewards)
    events_per_user = np.bincount(piece.user_index).astype(float)
    reference = ratio_interval(errors, events_per_user, "percentile", 0.9, 200, seed)
    assert got["mean_error"].low == pytest.approx(min(reference.low, reference.value))
    assert got["mean_error"].high == pytest.approx(max(reference.high, reference.value))
    # ECE: event-weighted |mean predicted - mean observed| over the quantile bins, by hand
    bins = quantile_bins(pred)
    by_hand = sum((bins == b).sum() * abs(pred[bins == b].mean() - rewards[bins == b].mean())
                  for b in np.unique(bins)) / len(pred)
    assert got["ece"].value == pytest.approx(by_hand)
    assert sum(b["events"] for b in got["reliability"]) == len(pred)
    for b in got["reliability"]:
        in_bin = bins == b["bin"]
        assert b["events"] == in_bin.sum() > 0
        if len(np.unique(users[in_bin])) < 2:  # no interval from one user
            assert not b["predicted"].available
            continue
        assert b["predicted"].value == pytest.approx(pred[in_bin].mean())
        assert b["observed"].value == pytest.approx(rewards[in_bin].mean())


@settings(max_examples=60, deadline=None)
@given(_events(binary=True), st.integers(0, 2**16))
def test_binary_metrics_match_scipy_and_definitions(events, seed) -> None:
    users, pred, rewards = events
    piece = _slice(users)
    got = calibration(pred, rewards, piece, binary=True, confidence=0.9, n_resamples=100,
                      seed=seed, min_users=2)
    assert got["brier"].value == pytest.approx(np.mean((pred - rewards) ** 2))
    clipped = np.clip(pred, 1e-6, 1 - 1e-6)
    log_loss = -np.mean(rewards * np.log(clipped) + (1 - rewards) * np.log(1 - clipped))
    assert got["log_loss"].value == pytest.approx(log_loss)
    positive, negative = pred[rewards == 1], pred[rewards == 0]
    if len(positive) and len(negative):
        u = scipy.stats.mannwhitneyu(positive, negative).statistic  # ties count half
        assert got["auc"].value == pytest.approx(u / (len(positive) * len(negative)))
        assert auc(pred, rewards) == pytest.approx(got["auc"].value)
    else:
        assert not got["auc"].available


def test_is_binary() -> None:
    assert is_binary(np.array([0.0, 1.0, 1.0]))
    assert not is_binary(np.array([1.0, 1.0]))
    assert not is_binary(np.array([0.0, 0.5, 1.0]))


def test_shift_is_the_difference_of_event_level_means() -> None:
    rng = np.random.default_rng(0)
    train_users, held_users = rng.integers(0, 50, 400), np.arange(60)  # 10 users only held out
    result = shift(train_users, rng.normal(3, 1, 400), held_users, rng.normal(2, 1, 60),
                   confidence=0.95, n_resamples=500, seed=0)
    figure = result["heldout_minus_train"]
    assert figure.value == pytest.approx(result["heldout_mean"].value
                                         - result["train_mean"].value)
    assert figure.high < 0 and result["p_value"] < 0.05


@pytest.mark.parametrize("k", [1, 2, 4])
def test_leave_last_k_out(world: World, k: int) -> None:
    log = encode(validate(world.generate(), "sim"), source="sim")
    train, heldout = last_events_out(log, k)
    counts = np.bincount(log.users)
    eligible = np.flatnonzero(counts > k)
    assert np.array_equal(np.bincount(heldout.users, minlength=len(counts))[eligible],
                          np.full(len(eligible), k))
    assert len(train) + len(heldout) == len(log)
    last_ts = {}
    for u, t in zip(heldout.users, heldout.timestamps, strict=True):
        last_ts[u] = min(last_ts.get(u, t), t)
    train_last = {}
    for u, t in zip(train.users, train.timestamps, strict=True):
        train_last[u] = max(train_last.get(u, t), t)
    assert all(train_last[u] <= t for u, t in last_ts.items())
    if k == 2:
        split = leave_last_out(log)
        assert heldout.table.equals(split.valid.concat(split.test).table)


def test_more_heldout_events_per_user_give_more_pairs_and_a_smaller_detectable_gain(
    world: World,
) -> None:
    table = world.generate()
    found = {}
    for k in (2, 6):
        train, heldout = audit_inputs(table, heldout_per_user=k)
        result = audit(train, heldout, config=FAST)
        entry = next(c for c in result.comparisons if c["model"] == "ensemble"
                     and c["baseline"] == "item_mean" and c["slice"] == "all"
                     and c["metric"] == "pairwise_accuracy")
        found[k] = (result.slices["all"]["pairs"], entry["detectable_difference"])
    assert found[6][0] > 5 * found[2][0]
    assert found[6][1] < found[2][1]


def test_a_difference_of_the_detectable_size_is_found_with_the_stated_power() -> None:
    rng = np.random.default_rng(0)
    n, alpha, power = 40, 0.05 / 8, 0.8
    size = detectable_difference(n, 1.0, alpha=alpha, power=power)
    # paired differences of that mean and sd 1: a t-test at alpha finds them `power` of the time
    draws = rng.normal(size, 1.0, size=(4000, n))
    p = scipy.stats.ttest_1samp(draws, 0.0, axis=1).pvalue
    assert abs((p < alpha).mean() - power) < 0.03
    # sizes where statsmodels' solver falls back (and returns an array): still a float, and
    # close to the normal-approximation formula
    for n, alpha_ in ((36, 0.05 / 28), (51, 0.05 / 28), (59, 0.05 / 4)):
        got = detectable_difference(n, 1.0, alpha=alpha_, power=0.8)
        t = scipy.stats.t
        approx = (t.ppf(1 - alpha_ / 2, n - 1) + t.ppf(0.8, n - 1)) / np.sqrt(n)
        assert isinstance(got, float) and got == pytest.approx(approx, rel=0.03)
    assert detectable_difference(5, 0.0, alpha=0.05, power=0.8) is None
    assert detectable_difference(1, 1.0, alpha=0.05, power=0.8) is None


def test_cli_refuses_inconsistent_holdout_flags(world: World, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(world.generate(), path)
    out = tmp_path / "out"
    assert main(["audit", "--data", str(path), "--out", str(out), "--holdout-kind",
                 "random"]) == 2
    assert main(["audit", "--data", str(path), "--holdout", str(path), "--out", str(out),
                 "--heldout-per-user", "3"]) == 2
    assert not out.exists()


def test_audit_json_carries_calibration_shift_and_detectable_difference(
    world: World, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(world.generate(), path)
    out = tmp_path / "out"
    code = main(["audit", "--data", str(path), "--out", str(out), "--kinds", "lightgbm",
                 "--members", "2", "--lightgbm-rounds", "30", "--resamples", "200",
                 "--threads", "1", "--heldout-per-user", "3"])
    assert code == 0
    payload = json.loads((out / "audit.json").read_text())
    for model in ("ensemble", "bias", "item_mean"):
        for slice_name in ("all", "unexplored"):
            assert {"mean_error", "ece"} <= set(payload["calibration"][model][slice_name])
    assert set(payload["shift"]["heldout_minus_train"]) >= {"value", "low", "high"}
    tested = [c for c in payload["comparisons"] if c["p_value"] is not None]
    assert tested and all(c["detectable_difference"] > 0 for c in tested)
    assert payload["slices"]["all"]["events"] == 3 * payload["slices"]["all"]["users"]


def test_slices_and_test_sets_under_200_users_carry_the_coverage_warning(world: World) -> None:
    from rmdiag.audit.statistics import COVERAGE_MIN_USERS, coverage_warning

    assert coverage_warning(COVERAGE_MIN_USERS, "x") is None
    assert "fewer than 200" in coverage_warning(COVERAGE_MIN_USERS - 1, "x")
    train, heldout = audit_inputs(world.generate())
    result = audit(train, heldout, config=FAST)
    for info in result.slices.values():
        assert (info["coverage_warning"] is not None) == (0 < info["users"] < COVERAGE_MIN_USERS)
    assert result.slices["all"]["coverage_warning"] is None  # 500 users
