"""The selection study's machinery (benchmarks/selection_study.py, issue 12) on two tiny worlds,
and its rule fitting on hand-made records whose best rule is known."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import selection_study as study
from rmdiag import select
from rmdiag.audit import AuditConfig
from rmdiag.policies import PolicyConfig

TINY = dataclasses.replace(
    study.QUICK,
    n_items=60,  # users of 8-10 events (log-sd 0.5): none sees nearly all 60 items
    axes=study._with_range(study.AXES, n_users=(100, 130), mean_events=(8.0, 10.0)),
    audit=AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=10,
                      threads=1),
    policy=PolicyConfig(hidden=16, n_blocks=1, sft_epochs=1, post_steps=2, batch_size=64,
                        n_resamples=200, threads=1, progress=False),
    n_resamples=200,
)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("selection_study")
    records, errors = study.run_worlds(study.world_specs(2, 0, TINY), TINY, out, workers=1,
                                       log=lambda _: None)
    assert errors == {}
    return out, records


def test_world_records(worlds: tuple[Path, list[dict[str, Any]]]) -> None:
    out, records = worlds
    assert [r["index"] for r in records] == [0, 1]
    for record in records:
        assert set(record["regret"]) == set(study.CANDIDATES)
        assert record["regret"][record["best"]] == 0.0
        assert min(record["regret"].values()) == 0.0  # the best is the highest mean
        assert record["best"] in record["tied_best"]
        assert record["decisive"] == (len(record["tied_best"]) < len(study.CANDIDATES))
        for other, test in record["vs_best"].items():
            assert test["significantly_worse"] == (other not in record["tied_best"])
            assert test["difference"]["value"] == pytest.approx(record["regret"][other])
        assert record["pick"] in study.CANDIDATES
        assert record["verdict"] in ("generalizes", "directional", "unreliable")
        assert set(record["features"]) == set(study.FEATURES)
        for name in ("rmse_gain_bias", "pairwise_gain_item_mean", "greedy_gain",
                     "judge_gain_ppo"):
            assert isinstance(record["features"][name], float)
        # the feature is the comparison's difference, signed so that larger is better
        assert record["features"]["rmse_gain_bias"] == pytest.approx(
            -record["evidence"]["comparisons"]["all.rmse.bias"]["value"])
        figure = record["true_reward"]["ppo"]
        assert figure["low"] <= figure["value"] <= figure["high"]
        # every sweep point's validation figure and true reward, the chosen one among them
        for name, sweep in record["evidence"]["sweep_oracle"].items():
            chosen = record["temperatures"][name][sweep["parameter"]]
            assert chosen == sweep["chosen"] in [p["value"] for p in sweep["points"]]
            assert all(isinstance(p["true_reward"]["value"], float) for p in sweep["points"])
        assert record["knobs"]["n_users"] == record["simulation"]["n_users"]
        on_disk = json.loads(study.world_path(out, record["index"]).read_text())
        assert on_disk == json.loads(json.dumps(record))


def test_finished_worlds_are_skipped(worlds: tuple[Path, list[dict[str, Any]]],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out, records = worlds

    def must_not_run(*_: Any) -> dict[str, Any]:
        raise AssertionError("a finished world was recomputed")

    monkeypatch.setattr(study, "run_world", must_not_run)
    again, errors = study.run_worlds(study.world_specs(2, 0, TINY), TINY, out, workers=1,
                                     log=lambda _: None)
    assert errors == {} and again == json.loads(json.dumps(records))
    # a changed setting is a different fingerprint: that world is recomputed, not reused
    changed = dataclasses.replace(TINY, kappa=2.0)
    _, errors = study.run_worlds(study.world_specs(1, 0, changed), changed, out, workers=1,
                                 log=lambda _: None)
    assert "a finished world was recomputed" in errors[0]


def test_analysis_on_two_worlds(worlds: tuple[Path, list[dict[str, Any]]],
                                tmp_path: Path) -> None:
    _, records = worlds
    analysis = study.analyse(records, 2, 0, study.RULE_FEATURES, n_resamples=200)
    assert len(analysis["calibration"]) == 1
    oracle = analysis["results"]["held_out"]["oracle"]
    assert oracle["accuracy"] == 1.0 and oracle["regret"]["value"] == 0.0
    study.landscape(records, set(analysis["calibration"]), analysis["rule"],
                    tmp_path / "landscape.png")
    assert (tmp_path / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = study.worlds_table(records, set(analysis["calibration"]), analysis["rule"])
    assert len(table.strip().splitlines()) == 2 + len(records)


def _record(index: int, features: dict[str, float], best: str, gap: float = 0.1) -> dict:
    regret = {c: (0.0 if c == best else gap) for c in study.CANDIDATES}
    return {"index": index, "features": features, "regret": regret, "best": best,
            "tied_best": [best], "decisive": True, "pick": "exp-sft"}


def test_fit_rule_finds_the_zero_regret_rule() -> None:
    # PPO wins where x is high; below, A-SFT where y is high, else exp-SFT; z is noise.
    rng = np.random.default_rng(0)
    records = []
    for i in range(20):
        x, y, z = float(i), float(rng.uniform()), float(rng.uniform())
        best = "ppo" if x >= 12 else ("a-sft" if y >= 0.5 else "exp-sft")
        records.append(_record(i, {"x": x, "y": y, "z": z}, best))
    rule = study.fit_rule(records, ["z", "y", "x"])
    assert study.rule_regret(records, rule) == 0.0
    assert [rule.pick(r) for r in records] == [r["best"] for r in records]
    assert rule.complexity == 2 and "x" in rule.describe()
    # one feature is enough when one decides: the simpler rule wins the tie
    simple = [_record(i, {"x": float(i), "z": float(rng.uniform())},
                      "ppo" if i >= 10 else "exp-sft") for i in range(20)]
    fitted = study.fit_rule(simple, ["z", "x"])
    assert fitted.complexity == 1 and study.rule_regret(simple, fitted) == 0.0


def test_fit_rule_minimizes_calibration_regret_when_no_rule_is_perfect() -> None:
    rng = np.random.default_rng(1)
    records = [_record(i, {"x": float(rng.normal()), "y": float(rng.normal())},
                       str(rng.choice(study.CANDIDATES)), gap=float(rng.uniform(0.01, 0.2)))
               for i in range(16)]
    rule = study.fit_rule(records, ["x", "y"])
    # brute force over the same family: every decision list of at most two conditions
    conditions = study.candidate_conditions(records, ["x", "y"])
    rules = [study.Rule((), a) for a in study.CANDIDATES]
    rules += [study.Rule(((c, a1),), a3) for c in conditions
              for a1, a3 in itertools.permutations(study.CANDIDATES, 2)]
    rules += [study.Rule(((c1, a1), (c2, a2)), a3) for c1 in conditions for c2 in conditions
              for a1 in study.CANDIDATES for a2, a3 in itertools.permutations(study.CANDIDATES, 2)]
    best = min(study.rule_regret(records, r) for r in rules)
    constant = min(study.rule_regret(records, study.Rule((), a)) for a in study.CANDIDATES)
    assert best < constant  # the hand-made set is one where a condition helps
    assert study.rule_regret(records, rule) == pytest.approx(best, abs=1e-12)


def test_evaluate_counts_ties_and_decisive_worlds() -> None:
    records = [_record(0, {}, "ppo"), _record(1, {}, "a-sft"), _record(2, {}, "exp-sft")]
    records[2] = records[2] | {"tied_best": ["exp-sft", "a-sft", "ppo"], "decisive": False,
                               "regret": {"exp-sft": 0.0, "a-sft": 0.01, "ppo": 0.02}}
    result = study.evaluate(records, lambda r: "ppo", n_resamples=200)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy_decisive"] == 0.5 and result["decisive_worlds"] == 2
    assert result["regret"]["value"] == pytest.approx((0.0 + 0.1 + 0.02) / 3)


def test_worlds_and_split_are_seeded() -> None:
    specs = study.world_specs(48, 0, study.FULL)
    assert specs == study.world_specs(48, 0, study.FULL) != study.world_specs(48, 1, study.FULL)
    assert len({s.seed for s in specs}) == 48
    for axis in study.AXES:
        values = [s.knobs[axis.name] for s in specs]
        assert axis.low <= min(values) and max(values) <= axis.high
        # a Latin hypercube: one world in each 1/48 stratum of the axis (before rounding)
        assert max(values) - min(values) > 0.9 * (axis.high - axis.low)
    half = study.split_worlds(0, 48)
    assert half == study.split_worlds(0, 48) and len(half) == 24 and half <= set(range(48))


def test_thresholds_are_short_exact_and_split_as_the_quantiles_do() -> None:
    """A fitted rule's thresholds print exactly (its `select_rule()` parses back through
    `rmdiag.select` to the same floats, so `--select-rule` runs what the study measured) and
    each candidate condition splits the records as the quantile it stands for."""
    rng = np.random.default_rng(3)
    names = ["rmse_gain_bias", "greedy_gain"]  # real features: rmdiag.select parses them
    records = [_record(i, {names[0]: float(rng.normal()) / 7, names[1]: float(rng.exponential())},
                       str(rng.choice(study.CANDIDATES))) for i in range(30)]
    for condition in study.candidate_conditions(records, names):
        values = np.array([r["features"][condition.feature] for r in records])
        quantiles = np.quantile(values, study.QUANTILES)
        split = values >= condition.threshold
        assert any(np.array_equal(split, values >= q) for q in quantiles), condition
        assert float(f"{condition.threshold:.6g}") == condition.threshold, condition  # short
    rule = study.fit_rule(records, names)
    assert rule.branches  # a rule with thresholds to print
    parsed = select.parse_rule(rule.select_rule())
    assert parsed is not None
    assert [(b.feature, b.op, b.threshold, b.algorithm) for b in parsed[0]] == [
        (c.feature, c.op, c.threshold, a) for c, a in rule.branches]
    assert study.short_threshold(0.1234, 0.1299) == 0.127
    assert study.short_threshold(1.0, 1.0000001) == 1.0000001


def test_repeated_splits_measure_the_fitting_procedure_on_other_halves() -> None:
    # PPO wins where x >= 20: a procedure that finds it beats every constant on held-out halves
    records = [_record(i, {"x": float(i), "z": float(np.sin(i))},
                       "ppo" if i >= 20 else "exp-sft") for i in range(40)]
    result = study.repeated_splits(records, 40, 0, ["z", "x"], 6)
    assert result == study.repeated_splits(records, 40, 0, ["z", "x"], 6)  # seeded
    assert result["splits"] == len(result["rows"]) == 6
    halves = [study.split_worlds((0, r), 40) for r in range(1, 7)]
    assert len({frozenset(h) for h in halves} | {frozenset(study.split_worlds(0, 40))}) == 7
    for row, calibration in zip(result["rows"], halves, strict=True):
        held = [r for r in records if r["index"] not in calibration]
        assert row["regret_always_ppo"] == pytest.approx(np.mean([r["regret"]["ppo"]
                                                                  for r in held]))
        assert row["accuracy_always_ppo"] == pytest.approx(np.mean([r["best"] == "ppo"
                                                                    for r in held]))
        assert row["regret_best_constant"] == pytest.approx(min(
            np.mean([r["regret"][c] for r in held]) for c in study.CANDIDATES))
        # thresholds sit at the calibration half's deciles: near the boundary, not on it
        assert row["accuracy"] >= 0.75 and row["beats_best_constant"]
        assert not row["always_ppo_passes"]  # half the worlds are exp-SFT's
    summary = result["summary"]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean([r["accuracy"]
                                                                 for r in result["rows"]]))
    assert summary["accuracy"]["q10"] <= summary["accuracy"]["mean"] <= summary["accuracy"]["q90"]
    assert result["share"]["beats_best_constant"] == 1.0
    # the noise feature alone cannot find it: the procedure then loses held-out worlds
    noise_only = study.repeated_splits(records, 40, 0, ["z"], 6)
    assert noise_only["summary"]["accuracy"]["mean"] < result["summary"]["accuracy"]["mean"]


def test_a_record_without_new_rule_figures_gets_them_without_post_training(
        worlds: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    """A record written before a rule figure existed gets it from the world's audit and SFT
    run again -- the same values as a full run's -- and one whose audit and SFT the code no
    longer reproduces is refused rather than mixed with new figures."""
    _, records = worlds
    spec = study.world_specs(2, 0, TINY)[0]
    full = records[0]
    added = ["greedy_replay_gain", "greedy_residual_gap", "greedy_gain_corrected"]
    old = json.loads(json.dumps(full))
    for name in added:
        del old["features"][name]
        old["evidence"]["greedy_pessimistic"].pop(name, None)
    assert study.missing_features(old) == added
    refreshed = study.refresh_features(spec, TINY, json.loads(json.dumps(old)))
    assert refreshed["features"] == full["features"]
    assert refreshed["refreshed"]["features"] == added
    # run_worlds refreshes such a record in place of rerunning the world
    out = tmp_path / "study"
    (out / "worlds").mkdir(parents=True)
    (out / "worlds" / "world_000.json").write_text(json.dumps(old))
    again, errors = study.run_worlds([spec], TINY, out, workers=1, log=lambda _: None)
    assert errors == {} and again[0]["features"] == full["features"]
    assert again[0]["seconds"] == full["seconds"]  # the world's own run, not repeated
    tampered = json.loads(json.dumps(old))
    tampered["evidence"]["greedy_pessimistic"]["gain"] += 1e-9
    with pytest.raises(ValueError, match="not this code's record"):
        study.refresh_features(spec, TINY, tampered)
