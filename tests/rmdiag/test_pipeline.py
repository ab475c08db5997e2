"""`rmdiag run` end to end on tiny simulated worlds: every output file and the JSON contract,
report.html read back against summary.json, escaping of the user's ids, `--compare all`, the
temperature sweep, determinism, exit codes and file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import trainers
from rmdiag.audit import AuditConfig
from rmdiag.cli import main
from rmdiag.pipeline import RunConfig, run
from rmdiag.policies import PolicyConfig
from rmdiag.simulate import SimulationConfig, World
from tests.rmdiag.test_report_html import Page, cell, figure_of, numbers

TINY_WORLD = SimulationConfig(n_users=150, n_items=80, mean_events=20.0, seed=3)
FAST_AUDIT = AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=20,
                         threads=1)
FAST_POLICY = PolicyConfig(hidden=16, n_blocks=1, sft_epochs=2, post_steps=3, batch_size=64,
                           n_resamples=200, threads=1, progress=False)
FIGURES = ("ndcg@10", "hr@10", "mrr", "judge", "true_reward")
EVIL = '<script>alert("x")</script>'


def is_figure(value: Any) -> bool:
    return (isinstance(value, dict) and value.get("value") is not None
            and value["low"] <= value["value"] <= value["high"])


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Every algorithm, at default temperatures, on a simulated world (true reward known)."""
    out = tmp_path_factory.mktemp("compare")
    summary = run(RunConfig(max_len=20, compare="all", sweep=False), out=out,
                  simulation=TINY_WORLD, audit_config=FAST_AUDIT, policy_config=FAST_POLICY)
    return out, summary


def test_summary_has_the_contract_keys_and_figures(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    summary = json.loads((out / "summary.json").read_text())
    assert {"audit", "decision", "policies", "evaluation", "conclusion"} <= set(summary)
    decision = json.loads((out / "decision.json").read_text())
    assert decision == summary["decision"]
    assert decision["algorithm"] in ("ppo", "a-sft", "exp-sft")
    assert decision["verdict"] == summary["audit"]["verdict"]
    assert decision["reasons"] and all(isinstance(r, str) for r in decision["reasons"])
    chosen = decision["algorithm"]
    for name in ("sft", chosen):
        for metric in FIGURES:
            assert is_figure(summary["policies"][name][metric]), (name, metric)
    for metric in FIGURES:
        difference = summary["policies"][chosen]["vs_sft"][metric]
        assert is_figure(difference["difference"])
        assert 0 <= difference["p_value"] <= difference["p_adjusted"] <= 1
    assert "vs_sft" not in summary["policies"]["sft"]
    assert len(summary["conclusion"]) == 3 and "true reward" in summary["conclusion"][0]


def test_compare_all_reports_every_algorithm(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == set(trainers.ALGORITHMS)
    for name, entry in summary["policies"].items():
        assert entry["algorithm"] == name and entry["steps"] >= 1
        assert all(is_figure(entry[m]) for m in FIGURES)


def test_report_tables_match_the_summary(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    summary = json.loads((out / "summary.json").read_text())
    page = Page((out / "report.html").read_text())
    rows = {row["attrs"]["data-policy"]: row for row in page.tables["policies"]
            if "data-policy" in row["attrs"]}
    assert set(rows) == set(summary["policies"])
    for name, entry in summary["policies"].items():
        for metric in FIGURES:
            assert numbers(cell(rows[name], metric)) == figure_of(entry[metric]), (name, metric)
    comparisons = [row for row in page.tables["comparisons"] if "data-model" in row["attrs"]]
    assert len(comparisons) == len(summary["audit"]["comparisons"])


def test_per_user_parquet_holds_every_policy_figure(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    summary = json.loads((out / "summary.json").read_text())
    table = pq.read_table(out / "per_user.parquet")
    users = summary["evaluation"]["users"]
    assert table.num_rows == users * len(summary["policies"])
    for name, entry in summary["policies"].items():
        rows = table.filter(pa.compute.equal(table["policy"], name))
        for metric in FIGURES:
            values = rows[metric].to_numpy()
            assert values.mean() == pytest.approx(entry[metric]["value"], rel=1e-9, abs=1e-12)
        high = rows.filter(rows["high_reward"])
        assert high.num_rows == entry["high_reward"]["users"]
        assert high["ndcg@10"].to_numpy().mean() == pytest.approx(
            entry["high_reward"]["ndcg@10"]["value"])


def test_outputs_are_readable_by_the_group(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    mask = os.umask(0)
    os.umask(mask)
    for path in out.iterdir():
        if path.name == ".work":  # the stages kept for --resume (a directory), not an output
            assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
            continue
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


@pytest.fixture(scope="module")
def hostile_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny log whose item and user ids are strings with markup in them."""
    table = World(TINY_WORLD).generate()
    hostile = table.set_column(
        1, "item_id", pa.array([f"{EVIL}{i}" for i in table["item_id"].to_pylist()]))
    hostile = hostile.set_column(
        0, "user_id", pa.array([f"u'{u}\"" for u in table["user_id"].to_pylist()]))
    path = tmp_path_factory.mktemp("hostile") / "log.parquet"
    pq.write_table(hostile, path)
    return path


def test_user_ids_come_out_escaped_and_per_user_speaks_them(hostile_log: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(RunConfig(max_len=20, audit=False, sweep=False), data=hostile_log, out=out,
        policy_config=FAST_POLICY)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decision"]["algorithm"] == "exp-sft"  # nothing audited, nothing trusted
    assert "true_reward" not in summary["policies"]["sft"]  # a file, not a simulated world
    example = summary["examples"][0]
    assert all(item.startswith(EVIL) for item in example["history"])
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    table = pq.read_table(out / "per_user.parquet")
    assert all(item.startswith(EVIL) for item in table["target_item_id"].to_pylist())
    assert all(user.startswith("u'") for user in table["user_id"].to_pylist())


def test_sweep_chooses_the_best_validation_temperature(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(RunConfig(max_len=20, audit=False), out=out, simulation=TINY_WORLD,
        policy_config=FAST_POLICY)
    summary = json.loads((out / "summary.json").read_text())
    curve = summary["sweep"]["exp-sft"]
    assert curve["parameter"] == "lam" and len(curve["points"]) == 5
    values = [point["ndcg@10"]["value"] for point in curve["points"]]
    best = curve["points"][int(np.argmax(values))]["value"]
    # ties go to the larger temperature (closer to SFT)
    tied = [p["value"] for p in curve["points"] if p["ndcg@10"]["value"] == max(values)]
    assert curve["best"] == max(tied) and best in tied
    assert summary["decision"]["temperature"] == {"lam": curve["best"]}
    assert summary["policies"]["exp-sft"]["temperature"] == {"lam": curve["best"]}
    assert all(is_figure(p["ndcg@10"]) and is_figure(p["true_reward"]) for p in curve["points"])
    assert any("validation sweep" in reason for reason in summary["decision"]["reasons"])


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    def numbers_of(out: Path) -> dict[str, Any]:
        summary = json.loads((out / "summary.json").read_text())
        return {name: {m: entry[m] for m in FIGURES if m in entry}
                for name, entry in summary["policies"].items()}
    settings = {"simulation": TINY_WORLD, "policy_config": FAST_POLICY}
    run(RunConfig(max_len=20, audit=False, sweep=False), out=tmp_path / "a", **settings)
    run(RunConfig(max_len=20, audit=False, sweep=False), out=tmp_path / "b", **settings)
    assert numbers_of(tmp_path / "a") == numbers_of(tmp_path / "b")


def test_cli_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = ["--sim-users", "100", "--sim-items", "60", "--no-audit", "--no-sweep",
            "--max-len", "20", "--policy-hidden", "16", "--policy-blocks", "1",
            "--policy-sft-epochs", "1", "--policy-post-steps", "2", "--policy-resamples", "200",
            "--policy-threads", "1", "--no-policy-progress"]
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--json", *fast]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "summary.json").read_text())
    # an unknown algorithm is a usage error: exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["run", "--out", str(bad), "--compare", "sft,nonsense", *fast]) == 2
    assert not bad.exists()
    # an algorithm that needs the reward model, with none audited: skipped and said so
    assert main(["run", "--out", str(bad), "--compare", "ppo", *fast]) == 0
    skipped = json.loads((bad / "summary.json").read_text())["evaluation"]["skipped"]
    assert "ppo" in skipped


def test_run_on_a_world_fitted_to_a_log_scores_with_its_true_reward(tmp_path: Path) -> None:
    # The paper table's semi-synthetic half: a World object (here fitted to a small log) is the
    # simulation; its true reward scores the policies and its parameters enter the record.
    from rmdiag.simulate import world_from_interactions

    table = World(TINY_WORLD).generate()
    fitted = world_from_interactions(table, rank=4, seed=1, n_iterations=3, calibration_rounds=2)
    out = tmp_path / "fitted"
    summary = run(RunConfig(max_len=20, audit=False), out=out, simulation=fitted,
                  policy_config=FAST_POLICY)
    written = json.loads((out / "summary.json").read_text())
    assert is_figure(written["policies"]["sft"]["true_reward"])
    record = written["simulation"]
    assert len(record["parameters_sha256"]) == 64 and record["n_users"] == fitted.n_users
    assert summary.data["events"] == len(fitted.generate())


def test_each_stage_records_its_own_peak_memory() -> None:
    # The high-water mark restarts at each stage: a stage that holds 400 MB shows it, the one
    # after it (which frees it) does not; summary.json carries the record as `memory`.
    from rmdiag.pipeline.clock import StageClock

    clock = StageClock()
    clock("small")
    clock("big")
    block = np.ones(400 * 2**20 // 8)
    clock("after")
    del block
    clock("end")
    clock(None)
    memory = clock.memory
    assert set(memory) == {"small", "big", "after", "end"}
    if memory["big"].get("since_start"):
        pytest.skip("the peak cannot be reset on this system (not Linux)")
    assert memory["big"]["peak_rss_mib"] - memory["small"]["peak_rss_mib"] > 350
    assert memory["end"]["peak_rss_mib"] < memory["big"]["peak_rss_mib"] - 350
