"""`rmdiag run --resume`: an interrupted run (SIGINT while a policy trains) exits 1, leaves no
partial file and no summary, and resuming it gives the summary of an uninterrupted run; a changed
policy setting recomputes the policies it affects and reuses the audit (issue 11, point 3). A run
killed (SIGKILL) mid-training resumes to the same summary, and resuming an interrupted training
under other settings exits 2 naming them (issue 14, point 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rmdiag.cli import main
from rmdiag.workdir import RECORD_FILE, WORK_DIR, WorkDir
from tests.rmdiag.summaries import comparable
from trainers import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# A tiny world and fast settings (as tests/rmdiag/test_pipeline.py); one torch thread, which
# exact resume needs. exp-SFT post-trains long enough (checkpoints every 150 of 600 steps) for
# the interrupt to land inside its training; the verdict's mapping (`--select-rule verdict`)
# picks it on this world, where the default rule picks another algorithm.
FAST = ["--select-rule", "verdict",
        "--sim-users", "150", "--sim-items", "80", "--sim-mean-events", "20", "--sim-seed", "3",
        "--audit-kinds", "lightgbm", "--audit-members", "2", "--audit-resamples", "200",
        "--audit-lightgbm-rounds", "20", "--audit-threads", "1", "--max-len", "20",
        "--policy-hidden", "16", "--policy-blocks", "1", "--policy-sft-epochs", "2",
        "--policy-batch-size", "64", "--policy-resamples", "200", "--policy-threads", "1",
        "--no-policy-progress", "--no-sweep", "--policy-post-steps", "600"]


def summary_of(out: Path) -> Any:
    return comparable(json.loads((out / "summary.json").read_text()))


def stages_of(out: Path) -> dict[str, dict[str, Any]]:
    return json.loads((out / WORK_DIR / RECORD_FILE).read_text())["stages"]


def _default_signals() -> None:
    """In the child before exec: `signum` at its default and unblocked. A child inherits both
    from the test process, where an earlier test's library (threads that block signals, or an
    ignored SIGINT) may have changed them -- then the child's Python installs no KeyboardInterrupt
    handler, or never sees the signal, and the run ends as if never interrupted."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def signal_while_training(out: Path, checkpoint: str, signum: int,
                          timeout: float = 120.0) -> tuple[int, str]:
    """Start `rmdiag run` in a subprocess, send it `signum` once `checkpoint` exists; its exit
    code and stderr."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen(
        [sys.executable, "-m", "rmdiag.cli", "run", "--out", str(out), *FAST],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals,
    )
    target = out / WORK_DIR / "checkpoints" / checkpoint
    deadline = time.monotonic() + timeout
    try:
        while not target.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {target} before the run ended: "
                                     f"{process.communicate()[1][-2000:]}")
            time.sleep(0.01)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def interrupt_while_training(out: Path, checkpoint: str, attempts: int = 3) -> int:
    """SIGINT `rmdiag run` once `checkpoint` exists; its exit code. A run that finishes before
    the signal takes effect (the machine's scheduling decides: once in a CI run) is started
    again from scratch, up to `attempts` times; one of them must be interrupted."""
    for _ in range(attempts):
        shutil.rmtree(out, ignore_errors=True)
        code, stderr = signal_while_training(out, checkpoint, signal.SIGINT)
        # the CLI's own line (the output path may contain the word "interrupted" too)
        if "rmdiag run: interrupted" in stderr:
            return code
        assert code == 0 and "rmdiag run: done" in stderr, stderr[-2000:]
    raise AssertionError(f"no run of {attempts} was interrupted before it finished")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(["run", "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("interrupted") / "out"
    return out, interrupt_while_training(out, "exp-sft.pt")


def test_an_interrupt_exits_1_and_leaves_no_partial_file(interrupted: tuple[Path, int]) -> None:
    out, code = interrupted
    assert code == 1
    everything = list(out.rglob("*"))
    assert not [p for p in everything if p.name.endswith(".tmp") or ".staging-" in p.name]
    assert not (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if p.name != WORK_DIR]  # nothing published
    stages = stages_of(out)
    assert stages["audit"]["done"] and stages["policy:sft"]["done"]
    assert not stages["policy:exp-sft"]["done"]  # in training, with its checkpoint kept
    assert (out / WORK_DIR / "checkpoints" / "exp-sft.pt").exists()


def test_resuming_an_interrupted_training_under_other_settings_exits_2_naming_them(
    interrupted: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = interrupted
    checkpoint = out / WORK_DIR / "checkpoints" / "exp-sft.pt"
    kept = checkpoint.read_bytes()
    capsys.readouterr()
    assert main(["run", "--out", str(out), *FAST, "--resume", "--policy-post-lr", "0.002"]) == 2
    stderr = capsys.readouterr().err
    assert "rmdiag run: error: cannot resume" in stderr and "exp-sft.pt" in stderr
    # the one input that differs, named; SFT's inputs (post_lr is not among them) are unchanged
    assert "policy_config.post_lr: 0.0005 in the checkpoint, 0.002 now); resume with" in stderr
    assert "internal failure" not in stderr
    assert checkpoint.read_bytes() == kept  # the interrupted training is kept for a real resume
    assert not stages_of(out)["policy:exp-sft"]["done"]
    assert not (out / "summary.json").exists()


def test_resume_gives_the_uninterrupted_summary_and_a_changed_input_recomputes(
    interrupted: tuple[Path, int], uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = interrupted
    capsys.readouterr()
    assert main(["run", "--out", str(out), *FAST, "--resume"]) == 0
    stderr = capsys.readouterr().err
    assert "audit: reused" in stderr and "policies.sft: reused" in stderr
    assert "exp-sft reused" not in stderr  # resumed from its checkpoint, then saved
    assert summary_of(out) == summary_of(uninterrupted)
    stages = stages_of(out)
    assert {k: v["status"] for k, v in stages.items()} == {
        "audit": "reused", "policy:sft": "reused", "policy:exp-sft": "computed"}
    assert not list((out / WORK_DIR / "checkpoints").iterdir())  # saved policies supersede them
    assert all(v["done"] for v in stages.values())

    # a different post-training budget: the audit and SFT are reused, exp-SFT is retrained
    assert main(["run", "--out", str(out), *FAST, "--resume", "--policy-post-steps", "100"]) == 0
    stderr = capsys.readouterr().err
    assert "audit: reused" in stderr and "policies.sft: reused" in stderr
    assert "exp-sft reused" not in stderr
    stages = stages_of(out)
    assert {k: v["status"] for k, v in stages.items()} == {
        "audit": "reused", "policy:sft": "reused", "policy:exp-sft": "computed"}
    assert stages["policy:exp-sft"]["inputs"]["policy_config"]["post_steps"] == 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"]["exp-sft"]["steps"] == 100
    assert comparable(summary["audit"]) == summary_of(uninterrupted)["audit"]


def test_a_run_killed_during_training_resumes_to_the_uninterrupted_summary(
    uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SIGKILL: no handler runs, so whatever was being written stays as it was (a checkpoint's
    # temp file included), and the steps since the last checkpoint are lost and redone.
    out = tmp_path / "out"
    code, _ = signal_while_training(out, "exp-sft.pt", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "summary.json").exists() and not stages_of(out)["policy:exp-sft"]["done"]
    kept = load_checkpoint(out / WORK_DIR / "checkpoints" / "exp-sft.pt")
    assert kept["step"] in (150, 300, 450)  # killed inside exp-SFT's 600 steps
    capsys.readouterr()
    assert main(["run", "--out", str(out), *FAST, "--resume"]) == 0
    stderr = capsys.readouterr().err
    assert "audit: reused" in stderr and "policies.sft: reused" in stderr
    assert summary_of(out) == summary_of(uninterrupted)
    assert not list((out / WORK_DIR / "checkpoints").iterdir())  # no temp file left either


def test_a_fresh_run_replaces_the_work_directory(tmp_path: Path) -> None:
    stale = tmp_path / WORK_DIR / "policies" / "sft"
    stale.mkdir(parents=True)
    (tmp_path / WORK_DIR / RECORD_FILE).write_text('{"version": 1, "stages": {"x": {}}}')
    assert WorkDir(tmp_path, resume=True).stages == {"x": {}}
    assert stale.exists()
    work = WorkDir(tmp_path, resume=False)
    assert work.stages == {} and not stale.exists() and not work.root.exists()
    # an unreadable record is no record: every stage recomputes
    work.root.mkdir()
    (work.root / RECORD_FILE).write_text("{not json")
    assert WorkDir(tmp_path, resume=True).stages == {}


def test_resume_needs_an_output_directory() -> None:
    from rmdiag.pipeline import RunConfig, run

    with pytest.raises(ValueError, match="resume"):
        run(RunConfig(resume=True))


def test_input_the_audit_refuses_leaves_nothing(tmp_path: Path) -> None:
    constant = tmp_path / "constant.csv"
    constant.write_text(
        "user_id,item_id,timestamp,reward\n"
        + "".join(f"{u},{i},{t},3\n" for u in range(1, 30) for t, i in enumerate(range(1, 6)))
    )
    refused = tmp_path / "refused"
    assert main(["run", "--data", str(constant), "--out", str(refused), *FAST]) == 2
    assert not refused.exists()
