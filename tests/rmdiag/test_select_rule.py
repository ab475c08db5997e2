"""The calibrated selection rule (`SelectConfig.rule`) and the figures it reads
(`rmdiag.selection_features`): parsing, what `decide` does with it, the log's figures against
slow references, and `rmdiag run` choosing by a rule end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from rmdiag.audit import AuditConfig
from rmdiag.pipeline import RunConfig, run
from rmdiag.policies import EvalSet, PolicyConfig
from rmdiag.select import Judgement, SelectConfig, decide, parse_rule, rule_features
from rmdiag.selection_features import MIN_HITS, log_features, logged_slate_evidence
from rmdiag.simulate import SimulationConfig
from trainers import Context

TINY_WORLD = SimulationConfig(n_users=150, n_items=80, mean_events=20.0, seed=3)
FAST_AUDIT = AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=20,
                         threads=1)
FAST_POLICY = PolicyConfig(hidden=16, n_blocks=1, sft_epochs=2, post_steps=3, batch_size=64,
                           n_resamples=200, threads=1, progress=False)


def test_parse_rule_reads_a_decision_list_and_verdict() -> None:
    assert parse_rule("verdict") is None
    branches, default = parse_rule(
        "ppo if spread_error < 0.02; exp-sft if greedy_gain >= 0.1; otherwise a-sft")
    assert default == "a-sft"
    assert [(b.algorithm, b.feature, b.op, b.threshold) for b in branches] == [
        ("ppo", "spread_error", "<", 0.02), ("exp-sft", "greedy_gain", ">=", 0.1)]
    assert parse_rule("otherwise ppo") == ((), "ppo")
    assert rule_features(SelectConfig(
        rule="ppo if spread_error < 0.02; a-sft if spread_error >= 0.5; otherwise ppo")) == [
        "spread_error"]


@pytest.mark.parametrize(("rule", "says"), [
    ("ppo", "must end with 'otherwise ALG'"),
    ("ppo if novelty < 1; otherwise ppo", "unknown feature 'novelty'"),
    ("dpo if spread_error < 1; otherwise ppo", "must read 'ALG if FEATURE < T'"),
    ("ppo if spread_error <= 1; otherwise ppo", "must read 'ALG if FEATURE < T'"),
    ("ppo if spread_error < one; otherwise ppo", "threshold 'one' is not a number"),
    ("", "empty string"),
])
def test_a_malformed_rule_is_refused_naming_the_problem(rule: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        SelectConfig(rule=rule)


def _judgement(rule: str) -> Judgement:
    return Judgement("generalizes", ("the audit's reasons",), {}, SelectConfig(rule=rule))


def test_decide_takes_the_first_branch_that_holds_and_says_why() -> None:
    rule = "exp-sft if greedy_gain < 0.1; a-sft if spread_error >= 0.3; otherwise ppo"
    cases = [({"greedy_gain": 0.05, "spread_error": 0.5}, "exp-sft"),
             ({"greedy_gain": 0.2, "spread_error": 0.5}, "a-sft"),
             ({"greedy_gain": 0.2, "spread_error": 0.1}, "ppo"),
             ({"greedy_gain": None, "spread_error": 0.5}, "a-sft"),  # missing: not taken
             ({}, "ppo")]
    for features, algorithm in cases:
        decision = decide(_judgement(rule), None, features)
        assert decision.algorithm == algorithm, features
        assert decision.verdict == "generalizes"  # reported, not followed
        assert "greedy_gain = " in decision.reasons[-1]
    decision = decide(_judgement(rule), None, {"greedy_gain": None})
    assert "greedy_gain = unavailable" in decision.reasons[-1]
    assert decision.evidence["selection.greedy_gain"] == {"value": None}
    # decision.json names the rule that chose, thresholds exact, so it can be set again
    exact = "exp-sft if greedy_gain < 0.0209174; otherwise ppo"
    decision = decide(_judgement(exact), None, {"greedy_gain": 0.5})
    assert decision.to_json()["rule"] == exact
    # the verdict's rule is unchanged: generalizes -> ppo
    assert decide(_judgement("verdict")).algorithm == "ppo"
    assert decide(_judgement("verdict")).to_json()["rule"] == "verdict"


def _gini_reference(counts: np.ndarray) -> float:
    """Mean absolute difference over all ordered pairs / (2 * mean), the textbook form."""
    n = len(counts)
    return float(np.abs(counts[:, None] - counts[None, :]).sum() / (2 * n * n * counts.mean()))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=2, max_size=40).filter(lambda c: sum(c) > 0),
       st.integers(0, 2**31 - 1))
def test_log_features_match_slow_references(counts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = len(counts)
    items = np.repeat(np.arange(1, n_items + 1), counts)
    rewards = rng.integers(1, 6, len(items)).astype(np.float64)
    out = log_features(items, rewards, n_items)
    c = np.asarray(counts, dtype=np.float64)
    assert out["log_item_gini"] == pytest.approx(_gini_reference(c), abs=1e-12)
    assert out["log_rare_item_share"] == pytest.approx(float(np.mean(c < 5)))
    seen = [i for i in range(n_items) if counts[i] >= 5]
    means = [rewards[items == i + 1].mean() for i in seen]
    if len(seen) >= 3 and np.ptp(c[seen]) > 0 and np.ptp(means) > 0:
        expected = spearmanr(c[seen], means).statistic
        assert out["log_popularity_reward_corr"] == pytest.approx(expected, abs=1e-12)
    else:
        assert out["log_popularity_reward_corr"] is None


def test_log_features_of_even_and_one_item_logs() -> None:
    even = log_features(np.repeat(np.arange(1, 11), 7), np.ones(70), 10)
    assert even["log_item_gini"] == pytest.approx(0.0)
    single = log_features(np.full(50, 3), np.ones(50), 10)
    assert single["log_item_gini"] == pytest.approx(0.9)  # (n - 1) / n for one item of n
    assert log_features(np.zeros(0, dtype=np.int64), np.zeros(0), 10)["log_item_gini"] is None


def test_rmdiag_run_chooses_by_the_rule_with_the_figures_it_read() -> None:
    rule = "a-sft if greedy_gain >= -1000; otherwise ppo"  # holds whatever the gain
    summary = run(RunConfig(max_len=20, sweep=False), simulation=TINY_WORLD,
                  audit_config=FAST_AUDIT, policy_config=FAST_POLICY,
                  select_config=SelectConfig(rule=rule))
    assert summary.decision is not None and summary.decision.algorithm == "a-sft"
    evidence = summary.decision.evidence
    assert np.isfinite(evidence["selection.greedy_gain"]["value"])
    assert "a-sft" in summary.policies
    # the report says which rule chose, and that the verdict beside it was not followed
    page = str(summary.files()["report.html"])
    assert "by the selection rule: a-sft if greedy_gain &gt;= -1000.0; otherwise ppo" in page
    assert "(reported; the selection rule below chose the algorithm)" in page


class _TableEnsemble:
    """An ensemble whose member m scores user u's item i as table[m, u, i]."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = torch.from_numpy(table)

    def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.table[:, context.users[:, None], items]

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.members(context, items).mean(0)


def _logged_reference(table: np.ndarray, sft: np.ndarray, evalset: EvalSet, kappa: float,
                      k: int, gamma: float) -> dict[str, float | None]:
    """Event by event: each slate sorted in full, the target's position looked up."""
    sums = {"greedy": [0.0, 0.0, 0.0], "sft": [0.0, 0.0, 0.0]}
    hits = {"greedy": 0, "sft": 0}
    n_items = table.shape[2] - 1
    for e in range(len(evalset)):
        user = int(evalset.context.users[e])
        target, reward = int(evalset.targets[e]), float(evalset.target_rewards[e])
        excluded = {int(x) for x in evalset.exclude[e] if x >= 0}
        candidates = [i for i in range(1, n_items + 1) if i not in excluded]
        greedy = table[:, user].mean(0) - kappa * table[:, user].std(0)
        for name, score in (("greedy", greedy), ("sft", sft[user])):
            slate = sorted(candidates, key=lambda i, score=score: -score[i])[:k]
            if target in slate:
                w = gamma ** slate.index(target)
                hits[name] += 1
                sums[name][0] += w
                sums[name][1] += w * reward
                sums[name][2] += w * (reward - table[:, user, target].mean())
    if min(hits.values()) < MIN_HITS:
        return {"greedy_replay_gain": None, "greedy_residual_gap": None}
    return {"greedy_replay_gain": sums["greedy"][1] / sums["greedy"][0]
            - sums["sft"][1] / sums["sft"][0],
            "greedy_residual_gap": sums["greedy"][2] / sums["greedy"][0]
            - sums["sft"][2] / sums["sft"][0]}


@given(n_items=st.integers(2, 14), n_events=st.integers(0, 40), history=st.integers(0, 5),
       k=st.integers(1, 16), seed=st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_logged_slate_evidence_matches_an_event_by_event_reference(
        n_items: int, n_events: int, history: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users = 6
    table = rng.normal(size=(3, n_users, n_items + 1))  # continuous: no ties within a slate
    sft = rng.normal(size=(n_users, n_items + 1))
    users = rng.integers(0, n_users, n_events)
    targets = rng.integers(1, n_items + 1, n_events)
    past = rng.integers(0, n_items + 1, (n_events, history))  # 0: padding
    # an item seen before stays rankable as the target (as EvalSet.exclude has it)
    exclude = np.where((past > 0) & (past != targets[:, None]), past, -1)
    context = Context(torch.from_numpy(users), torch.from_numpy(past),
                      torch.zeros(n_events, history))
    evalset = EvalSet(context, targets, rng.integers(1, 6, n_events).astype(np.float64),
                      exclude)
    got = logged_slate_evidence(_TableEnsemble(table),
                                lambda c: torch.from_numpy(sft)[c.users].float(),
                                [evalset], n_items, kappa=0.5, k=k)
    want = _logged_reference(table, sft.astype(np.float32).astype(np.float64), evalset, 0.5,
                             min(k, n_items), 0.9)
    assert set(got) == set(want)
    for name, value in want.items():
        if value is None:
            assert got[name] is None
        else:
            assert got[name] == pytest.approx(value, abs=1e-9)
