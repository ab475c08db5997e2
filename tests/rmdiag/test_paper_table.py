"""benchmarks/paper_table's machinery on a tiny simulated world: every figure has an interval,
every comparison with SFT a Holm-adjusted p, the groups are the ones named, the percentage
change against reward-weighted BC is the ratio of the means, and the tables render."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.paper_table import (
    POLICIES,
    accumulated_rewards,
    per_user_values,
    render_policy_table,
    render_reward_model_table,
    run_one,
)
from rmdiag.pipeline import RunConfig
from rmdiag.simulate import World
from tests.rmdiag.test_pipeline import FAST_AUDIT, FAST_POLICY, TINY_WORLD


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("paper")
    result = run_one("semi", out, None, None, World(TINY_WORLD), FAST_POLICY,
                     RunConfig(max_len=20, compare="all", sweep=False), FAST_AUDIT)
    return out, result


def _is_figure(f: dict) -> bool:
    return f["value"] is not None and f["low"] <= f["value"] <= f["high"]


def test_every_policy_figure_has_an_interval_and_every_comparison_an_adjusted_p(tables) -> None:
    _, result = tables
    groups = result["policies"]["groups"]
    assert list(groups) == ["all", "high-reward targets", "high-reward trajectories"]
    assert set(groups["all"]["policies"]) == set(POLICIES)
    n = groups["all"]["users"]
    # above the median of the accumulated rewards: at most half of the users
    assert 0 < groups["high-reward trajectories"]["users"] <= n / 2
    for entry in groups.values():
        for name, row in entry["policies"].items():
            for metric in ("ndcg@10", "hr@10", "mrr", "judge", "true_reward"):
                assert _is_figure(row[metric]), (name, metric)
                if name != "sft":
                    vs = row["vs_sft"][metric]
                    assert _is_figure(vs["difference"])
                    assert vs["p_value"] <= vs["p_adjusted"] <= 1
    gains = result["policies"]["judge_minus_true_gain"]
    assert set(gains) == set(POLICIES) - {"sft"}
    assert all(_is_figure(g["difference"]) for g in gains.values())


def test_percent_change_is_the_ratio_of_means_and_groups_follow_the_log(tables) -> None:
    out, result = tables
    users, values, high = per_user_values(out / "semi" / "per_user.parquet")
    row = result["policies"]["groups"]["all"]["policies"]["ppo"]
    expected = 100 * (values["ppo"]["judge"].mean() / values["rw-bc"]["judge"].mean() - 1)
    change = row["vs_rw_bc_percent"]["judge"]
    assert change["value"] == pytest.approx(expected)
    assert change["low"] <= change["value"] <= change["high"]
    assert result["policies"]["groups"]["high-reward targets"]["users"] == int(high.sum())
    # accumulated reward: the user's rewards before their last (test) event
    log = World(TINY_WORLD).generate()
    totals = accumulated_rewards(log, None, users)
    first = int(users[0])
    mine = log.filter(np.asarray(log["user_id"]) == first).sort_by("timestamp")
    assert totals[0] == pytest.approx(float(np.sum(mine["reward"].to_numpy()[:-1])))


def test_tables_render_with_every_group_and_model(tables) -> None:
    _, result = tables
    policy_md = render_policy_table(result["policies"])
    rm_md = render_reward_model_table(result["reward_models"])
    for text in ("high-reward trajectories", "% change against reward-weighted BC",
                 "Judged gain over SFT minus true gain", "**"):
        assert text in policy_md
    for model in ("global_mean", "user_mean", "item_mean", "bias", "ensemble"):
        assert f"| {model} |" in rm_md
    assert "None" not in policy_md + rm_md
