from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

from rmdiag.cli import main
from rmdiag.data import load


def test_simulate_is_byte_identical_for_a_seed_and_loads_back_cleanly(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    small = ["--users", "60", "--items", "40"]
    assert main(["simulate", "--out", str(a), "--seed", "1", *small]) == 0
    assert main(["simulate", "--out", str(b), "--seed", "1", *small]) == 0
    assert main(["simulate", "--out", str(c), "--seed", "2", *small]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = load(a)
    assert log.n_users == 60 and 0 < log.n_items <= 40 and len(log) > 60


def test_run_on_a_file_writes_summary_json(tmp_path: Path, capsys) -> None:
    data = tmp_path / "log.parquet"
    assert main(["simulate", "--out", str(data), "--users", "80", "--items", "50"]) == 0
    out = tmp_path / "out"
    fast_audit = [
        "--audit-kinds",
        "lightgbm",
        "--audit-members",
        "2",
        "--audit-resamples",
        "200",
        "--audit-lightgbm-rounds",
        "20",
        "--audit-threads",
        "1",
        # small policies: this test is about the command, tests/rmdiag/test_pipeline.py the job
        "--no-sweep",
        "--policy-hidden",
        "16",
        "--policy-sft-epochs",
        "2",
        "--policy-post-steps",
        "3",
        "--no-policy-progress",
    ]
    assert (
        main(["run", "--data", str(data), "--out", str(out), "--max-len", "20", *fast_audit]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    audit = json.loads((out / "audit.json").read_text())
    assert summary["audit"]["verdict"] == audit["verdict"]
    assert summary["audit_config"]["n_members"] == 2 and (out / "audit.html").exists()
    assert summary["data"]["users"] == 80
    assert summary["split"]["test"] == summary["split"]["valid"] > 0
    assert summary["sequences"]["train_shape"] == [81, 20]
    assert "events" in capsys.readouterr().out


def test_simulate_preset_with_overrides(tmp_path: Path) -> None:
    from rmdiag.simulate import SimulationConfig

    out = tmp_path / "p.parquet"
    args = ["simulate", "--out", str(out), "--preset", "item_mean_noise", "--users", "30"]
    assert main(args) == 0
    expected = SimulationConfig.preset("item_mean_noise", n_users=30)
    from rmdiag.simulate import World

    assert load(out).table.equals(load(World(expected).generate()).table)
    assert main(["simulate", "--out", str(tmp_path / "q.parquet"), "--preset", "nope"]) == 2


def test_console_script_usage_errors_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rmdiag.cli", "run", "--no-such-flag"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "usage" in result.stderr
    assert main(["run", "--out", str(tmp_path / "o"), "--split", "random"]) == 2
    assert not (tmp_path / "o").exists()


def test_audit_command_writes_both_files_or_nothing(tmp_path: Path, capsys) -> None:
    data = tmp_path / "log.parquet"
    assert (
        main(
            [
                "simulate",
                "--out",
                str(data),
                "--users",
                "150",
                "--items",
                "60",
                "--preset",
                "learnable",
            ]
        )
        == 0
    )
    out = tmp_path / "audit"
    fast = [
        "--kinds",
        "lightgbm",
        "--members",
        "2",
        "--lightgbm-rounds",
        "30",
        "--resamples",
        "200",
        "--threads",
        "1",
    ]
    assert main(["audit", "--data", str(data), "--out", str(out), *fast]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["verdict"] in ("generalizes", "directional", "unreliable")
    assert {"global_mean", "user_mean", "item_mean", "bias", "ensemble"} <= set(report["models"])
    assert (out / "audit.html").read_text().startswith("<!DOCTYPE html>")
    assert "verdict:" in capsys.readouterr().out
    # constant rewards cannot support an audit; invalid settings are usage errors
    constant = tmp_path / "constant.csv"
    constant.write_text(
        "user_id,item_id,timestamp,reward\n"
        + "".join(f"{u},{i},{t},3\n" for u in range(1, 30) for t, i in enumerate(range(1, 6)))
    )
    for args in (["--data", str(constant)], ["--data", str(data), "--members", "0"]):
        refused = tmp_path / "refused"
        assert main(["audit", *args, "--out", str(refused), *fast[:2]]) == 2
        assert not refused.exists()
    assert "constant" in capsys.readouterr().err.lower()


def test_a_worker_killed_for_memory_exits_1_with_a_line_not_a_traceback(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # The pool's worker is killed by the OOM killer in real life; here its BrokenProcessPool is
    # raised where the pool would raise it, and the CLI must say "out of memory" and exit 1.
    from concurrent.futures.process import BrokenProcessPool

    from rmdiag.rewards import ensemble

    class DeadPool:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self) -> DeadPool:
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

        def __exit__(self, *exc) -> None:
            return None

    monkeypatch.setattr(ensemble, "ProcessPoolExecutor", DeadPool)
    data = tmp_path / "log.parquet"
    assert main(["simulate", "--users", "60", "--items", "30", "--out", str(data)]) == 0
    out = tmp_path / "audit"
    code = main(["audit", "--data", str(data), "--out", str(out), "--no-overoptimization",
                 "--threads", "2"])
    stderr = capsys.readouterr().err
    assert code == 1
    assert "out of memory" in stderr and "killed" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
