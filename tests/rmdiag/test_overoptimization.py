"""The best-of-n over-optimization curve (`rmdiag.overoptimization`): the exact best-of-n
estimator against enumeration of every subset, the sampling, the curve on a world whose reward
model is wrong on the tail (the gold peaks, the proxy keeps rising) and on a learnable world
(both rise together), the selector's guard on hand-made curves, and the curve in `rmdiag run`'s
and `rmdiag audit`'s files."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag import policies
from rmdiag.audit import AuditConfig, Figure
from rmdiag.cli import main
from rmdiag.data import DataError, encode, validate, write_parquet
from rmdiag.overoptimization import (
    GOLD_JUDGE,
    GOLD_TRUE,
    best_of_n_kl,
    best_of_n_values,
    best_of_n_weights,
    n_grid,
    one_sided_p,
    overoptimization_curve,
    sample_items,
    user_contexts,
)
from rmdiag.pipeline import RunConfig, audit_files, run
from rmdiag.select import SelectConfig, verdict_from
from rmdiag.simulate import SimulationConfig, World
from rmdiag.split import leave_last_out
from rmdiag.stages.decision import select_decision
from tests.rmdiag.test_audit import _hand_made

MAX_LEN = 20
TINY_POLICY = policies.PolicyConfig(hidden=16, n_blocks=1, sft_epochs=2, batch_size=64,
                                    n_resamples=200, threads=1, progress=False)
FAST_AUDIT = AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=20,
                         threads=1)
CURVE_KEYS = {"n", "kl", "proxy", "gold", "gold_peak_n", "proxy_gold_gap", "proxy_after_peak",
              "gold_after_peak", "divergence", "gold_kind", "proxy_kind", "users", "samples",
              "alpha", "confidence", "interval", "peak_test"}


# -- the estimator ---------------------------------------------------------------------------


def enumerated_best_of_n(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[float, float]:
    """Mean over every n-subset of one user's samples of the proxy's pick, ties in the proxy
    broken uniformly at random (the tied maxima's mean gold)."""
    picks_proxy, picks_gold = [], []
    for subset in itertools.combinations(range(len(proxy)), n):
        values = proxy[list(subset)]
        best = [i for i in subset if proxy[i] == values.max()]
        picks_proxy.append(values.max())
        picks_gold.append(np.mean(gold[best]))
    return float(np.mean(picks_proxy)), float(np.mean(picks_gold))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.integers(1, 7), st.data())
def test_best_of_n_equals_enumerating_every_subset(users: int, m: int, data: st.DataObject) -> None:
    # proxy values from a set of three: many ties
    proxy = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=m,
                                                 max_size=m), min_size=users, max_size=users)))
    gold = np.array(data.draw(st.lists(st.lists(st.floats(-3, 3), min_size=m, max_size=m),
                                       min_size=users, max_size=users)))
    ns = list(range(1, m + 1))
    got_proxy, got_gold = best_of_n_values(proxy, gold, ns)
    assert got_proxy.shape == got_gold.shape == (m, users)
    for u in range(users):
        for row, n in enumerate(ns):
            want = enumerated_best_of_n(proxy[u], gold[u], n)
            assert got_proxy[row, u] == pytest.approx(want[0], abs=1e-9)
            assert got_gold[row, u] == pytest.approx(want[1], abs=1e-9)


def test_best_of_n_of_iid_draws_matches_monte_carlo() -> None:
    """A random n-subset of m iid draws is n iid draws: the estimator is the expected gold of
    the proxy's pick among n fresh draws."""
    rng = np.random.default_rng(0)
    catalog_proxy, catalog_gold = rng.normal(size=30), rng.normal(size=30)
    draws = rng.integers(0, 30, size=(4000, 16))  # 4000 "users" with 16 draws each
    values = best_of_n_values(catalog_proxy[draws], catalog_gold[draws], [4])[1][0].mean()
    fresh = rng.integers(0, 30, size=(200_000, 4))
    pick = fresh[np.arange(len(fresh)), catalog_proxy[fresh].argmax(1)]
    assert values == pytest.approx(catalog_gold[pick].mean(), abs=0.01)


def test_weights_kl_and_grid() -> None:
    weights = best_of_n_weights(64, n_grid())
    assert np.allclose(weights.sum(1), 1.0)
    assert np.allclose(weights[0], 1 / 64) and weights[-1, -1] == 1.0 == weights[-1].sum()
    assert n_grid() == [1, 2, 4, 8, 16, 32, 64]
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(64) == pytest.approx(np.log(64) - 63 / 64)
    with pytest.raises(ValueError):
        n_grid(48)
    assert one_sided_p(np.ones(5)) == 0.0 and one_sided_p(np.zeros(5)) == 1.0
    assert one_sided_p(np.array([1.0, 2.0, 3.0, 2.5])) < 0.05
    assert one_sided_p(-np.array([1.0, 2.0, 3.0, 2.5])) > 0.95


# -- the curve on simulated worlds -----------------------------------------------------------


def world_policy(config: SimulationConfig) -> tuple[World, Any, policies.PolicyData, Any]:
    world = World(config)
    log = encode(validate(world.generate(), "<world>"), source="<world>")
    data = policies.policy_data(leave_last_out(log), MAX_LEN)
    return world, log, data, policies.train_sft(data, MAX_LEN, TINY_POLICY).model


def fig(curve: dict[str, Any], key: str, n: int) -> dict[str, float]:
    return curve[key][curve["n"].index(n)]


def test_sampling_excludes_history_and_padding_and_is_seeded() -> None:
    _, log, data, model = world_policy(SimulationConfig(n_users=60, n_items=40, mean_events=10.0,
                                                        seed=2))
    context = user_contexts(data.valid.context)
    assert len(context) == len(np.unique(data.valid.context.users.numpy()))
    items, kept = sample_items(model, context, 64, seed=5, batch_users=16)
    assert items.shape == (len(kept), 64) and (items > 0).all() and (items <= log.n_items).all()
    history = context.history_items[torch.from_numpy(kept)]
    assert not (items[:, :, None] == history[:, None, :]).any()
    again, _ = sample_items(model, context, 64, seed=5, batch_users=16)
    assert torch.equal(items, again)
    assert not torch.equal(items, sample_items(model, context, 64, seed=6)[0])


def test_tail_wrong_reward_model_peaks_the_gold_while_the_proxy_keeps_rising() -> None:
    """The proxy is right on explored items and +3 on the rarely exposed tail (clipped to the
    top of the scale): best-of-n finds tail items as n grows and the gold turns down."""
    world, log, data, model = world_policy(SimulationConfig(n_users=200, n_items=300,
                                                            mean_events=20.0, seed=1))
    gold = policies.EncodedReward(world.true_reward, log.user_ids, log.item_ids)
    proxy = policies.EncodedReward(world.misspecified_reward(tail_bonus=3.0), log.user_ids,
                                   log.item_ids)
    curve = overoptimization_curve(model, user_contexts(data.valid.context), proxy, gold,
                                   GOLD_TRUE, n_resamples=500)
    assert CURVE_KEYS <= set(curve) and curve["users"] == 200
    peak = curve["gold_peak_n"]
    assert peak < 64
    assert curve["proxy_after_peak"]["low"] > 0  # the proxy keeps rising after the gold's peak
    assert curve["gold_after_peak"]["high"] < 0  # ...while the gold falls
    assert curve["divergence"]["p_value"] < 1e-6
    assert fig(curve, "proxy", 64)["value"] > fig(curve, "proxy", peak)["value"]
    assert curve["proxy_gold_gap"]["low"] > 0
    # deterministic
    again = overoptimization_curve(model, user_contexts(data.valid.context), proxy, gold,
                                   GOLD_TRUE, n_resamples=500)
    assert again == curve


def test_on_a_learnable_world_proxy_and_gold_rise_together() -> None:
    """A proxy that is the true reward plus small fixed noise per (user, item)."""
    world, log, data, model = world_policy(SimulationConfig.preset(
        "learnable", n_users=200, n_items=100, mean_events=20.0, seed=1))
    gold = policies.EncodedReward(world.true_reward, log.user_ids, log.item_ids)
    noise = 0.1 * torch.randn(log.n_users + 1, log.n_items + 1,
                              generator=torch.Generator().manual_seed(0))

    def proxy(context: Any, items: torch.Tensor) -> torch.Tensor:
        return gold(context, items) + noise[context.users[:, None], items]

    curve = overoptimization_curve(model, user_contexts(data.valid.context), proxy, gold,
                                   GOLD_TRUE, n_resamples=500)
    assert curve["gold_peak_n"] == 64
    assert fig(curve, "gold", 64)["low"] > fig(curve, "gold", 1)["high"]
    assert fig(curve, "proxy", 64)["low"] > fig(curve, "proxy", 1)["high"]
    assert curve["divergence"]["p_value"] == 1.0  # no peak before 64: nothing after it
    assert abs(curve["proxy_gold_gap"]["value"]) < 0.1


# -- the selector's guard --------------------------------------------------------------------


def hand_made_curve(peak: int, divergence_p: float) -> dict[str, Any]:
    ns = n_grid()
    gold = [min(n, peak) / 64 + 3 for n in ns]
    return {
        "n": ns, "kl": [best_of_n_kl(n) for n in ns],
        "proxy": [{"value": 3 + n / 32, "low": 2.9 + n / 32, "high": 3.1 + n / 32} for n in ns],
        "gold": [{"value": g, "low": g - 0.1, "high": g + 0.1} for g in gold],
        "gold_peak_n": peak, "proxy_gold_gap": {"value": 1.0, "low": 0.8, "high": 1.2},
        "divergence": {"value": 0.9, "low": 0.7, "high": 1.1, "p_value": divergence_p},
        "gold_kind": GOLD_TRUE, "alpha": 0.05,
    }


def test_the_guard_turns_generalizes_into_directional() -> None:
    fits, tests = _hand_made()
    assert verdict_from(fits, tests).verdict == "generalizes"
    over = hand_made_curve(peak=8, divergence_p=1e-4)
    judged = verdict_from(fits, tests, overoptimization=over)
    assert judged.verdict == "directional"
    assert any("cannot be generalizes" in r and "n = 8" in r for r in judged.reasons)
    assert judged.evidence["overoptimization.gold_peak_n"]["value"] == 8
    assert judged.evidence["overoptimization.proxy_gold_gap"] == over["proxy_gold_gap"]
    assert judged.evidence["overoptimization.divergence"]["p_value"] == 1e-4
    # no over-optimization: the gold rises all the way, or the gap does not widen significantly
    for curve in (hand_made_curve(peak=64, divergence_p=1.0),
                  hand_made_curve(peak=8, divergence_p=0.2)):
        judged = verdict_from(fits, tests, overoptimization=curve)
        assert judged.verdict == "generalizes"
        assert any(r.startswith("Best-of-n") for r in judged.reasons)
    # the guard off, or an unavailable curve: no effect
    off = SelectConfig(overoptimization_guard=False)
    assert verdict_from(fits, tests, off, overoptimization=over).verdict == "generalizes"
    unavailable = verdict_from(fits, tests, overoptimization={"reason": "not computed"})
    assert unavailable.verdict == "generalizes"
    assert not any(k.startswith("overoptimization") for k in unavailable.evidence)
    # a directional or unreliable verdict stays as it is
    level_not_beaten = {("bias", "all", "rmse"): (Figure(-0.003, -0.01, 0.005), 0.98)}
    ordering_not_beaten = {("bias", "all", "pairwise_accuracy"): (Figure(0.005, -0.009, 0.02),
                                                                  1.0)}
    for changes, verdict in ((level_not_beaten, "directional"),
                             (ordering_not_beaten, "unreliable")):
        assert verdict_from(*_hand_made(changes), overoptimization=over).verdict == verdict


# -- the pipeline's files --------------------------------------------------------------------


def check_curve(curve: dict[str, Any], gold_kind: str) -> None:
    assert CURVE_KEYS <= set(curve)
    assert curve["n"] == n_grid() and curve["gold_kind"] == gold_kind
    assert curve["kl"] == [best_of_n_kl(n) for n in curve["n"]]
    for series in ("proxy", "gold"):
        assert len(curve[series]) == 7
        assert all(f["low"] <= f["value"] <= f["high"] for f in curve[series])
    assert curve["gold_peak_n"] in curve["n"] and curve["users"] >= 2
    Figure(**{k: curve["divergence"][k] for k in ("value", "low", "high")})


def test_run_writes_the_curve_and_the_decision_reads_it(tmp_path: Path) -> None:
    world = SimulationConfig(n_users=150, n_items=80, mean_events=20.0, seed=3)
    out = tmp_path / "run"
    run(RunConfig(max_len=MAX_LEN, sweep=False), out=out, simulation=world,
        audit_config=FAST_AUDIT, policy_config=dataclasses.replace(TINY_POLICY, post_steps=3))
    summary = json.loads((out / "summary.json").read_text())
    audit = json.loads((out / "audit.json").read_text())
    check_curve(audit["overoptimization"], GOLD_TRUE)
    assert summary["audit"]["overoptimization"] == audit["overoptimization"]
    assert audit["overoptimization"]["users"] == summary["split"]["valid"]
    evidence = summary["decision"]["evidence"]
    assert evidence["overoptimization.gold_peak_n"]["value"] == audit[
        "overoptimization"]["gold_peak_n"]
    assert any(r.startswith("Best-of-n") for r in summary["decision"]["reasons"])
    assert list(summary["timings"]).index("policies.sft") < list(summary["timings"]).index(
        "overoptimization") < list(summary["timings"]).index("select")
    for page in ("audit.html", "report.html"):
        html = (out / page).read_text()
        assert "best-of-n over-optimization curve" in html and "gold-peak-n" in html

    off = tmp_path / "off"
    run(RunConfig(max_len=MAX_LEN, sweep=False, overoptimization=False), out=off,
        simulation=world, audit_config=FAST_AUDIT,
        policy_config=dataclasses.replace(TINY_POLICY, post_steps=3))
    assert json.loads((off / "audit.json").read_text())["overoptimization"] == {
        "reason": "not computed (--no-overoptimization)"}


def test_audit_files_fits_a_judge_on_half_the_users(tmp_path: Path) -> None:
    data = tmp_path / "log.parquet"
    write_parquet(World(SimulationConfig.preset("learnable", n_users=120, n_items=60,
                                                mean_events=15.0, seed=4)).generate(), data)
    result, judgement = audit_files(data, tmp_path / "audit", config=FAST_AUDIT,
                                    policy_config=TINY_POLICY)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    check_curve(audit["overoptimization"], GOLD_JUDGE)
    assert "half" in audit["overoptimization"]["proxy_kind"]
    assert audit["overoptimization"] == result.overoptimization
    assert "overoptimization" in audit["timings"]
    assert "overoptimization.gold_peak_n" in judgement.evidence
    assert "best-of-n over-optimization curve" in (tmp_path / "audit" / "audit.html").read_text()
    # `rmdiag select` reads the curve from the file, and refuses one with a figure missing
    decision = select_decision(tmp_path / "audit" / "audit.json")
    assert decision.evidence["overoptimization.gold_peak_n"] == judgement.evidence[
        "overoptimization.gold_peak_n"]
    broken = json.loads(json.dumps(audit))
    broken["overoptimization"]["divergence"].pop("p_value")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="overoptimization.divergence.p_value"):
        select_decision(tmp_path / "broken.json")
    # the flag that turns it off
    fast = ["--kinds", "lightgbm", "--members", "2", "--lightgbm-rounds", "20", "--resamples",
            "200", "--threads", "1"]
    assert main(["audit", "--data", str(data), "--out", str(tmp_path / "off"), *fast,
                 "--no-overoptimization"]) == 0
    off = json.loads((tmp_path / "off" / "audit.json").read_text())
    assert off["overoptimization"] == {"reason": "not computed (--no-overoptimization)"}
    assert "overoptimization" not in off["timings"]
    assert not any(k.startswith("overoptimization") for k in off["evidence"])
