"""benchmarks/million_items.py end to end at its --quick sizes: every stage runs, reports its
seconds, throughput and peak memory, and the last line is the JSON of the headline figures."""

from __future__ import annotations

import json

import pytest

from benchmarks import million_items


def test_quick_run_reports_every_stage_and_ends_with_its_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    result = million_items.main(["--quick", "--threads", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    assert list(result["stages"]) == ["world", "sequences", "sft", "evaluate", "baseline",
                                      "a-sft", "judge"]
    for stage in result["stages"].values():
        assert stage["seconds"] >= 0 and stage["peak_rss_mib"] > 0
    assert result["peak_rss_mib"] == max(s["peak_rss_mib"] for s in result["stages"].values())
    # events per user as the world drew them; every training target once
    quick = million_items.QUICK
    assert result["events"] > 5 * quick["users"]
    assert result["stages"]["sequences"]["training_targets"] <= result["events"] - quick["users"]
    for name in ("ndcg@10", "hr@10"):
        figure = result[name]
        assert 0.0 <= figure["low"] <= figure["value"] <= figure["high"] <= 1.0
    baseline = result["baseline"]
    assert baseline["samples"] == 16 and baseline["mean_standard_error"] > 0
    assert 1.0 <= baseline["mean"] <= 5.0 and baseline["exact_events"] == quick["exact_events"]
    for policy in ("sft", "a-sft"):
        for kind in ("judge", "true_reward"):
            figure = result["judge"][policy][kind]
            assert 1.0 <= figure["low"] <= figure["value"] <= figure["high"] <= 5.0
