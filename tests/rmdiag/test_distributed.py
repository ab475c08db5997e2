"""`rmdiag train` and `rmdiag run` under `torchrun --standalone --nproc-per-node 2` (gloo, CPU;
issue 16, point 5): every rank trains data-parallel, rank 0 alone writes, each output once and
whole. `rmdiag train sft` with 2 processes saves the weights of a 1-process run on the same
global batch; `rmdiag run` (its audit's sequence member trained data-parallel, the ensemble's
worker processes not started) writes its files and `.work` once, and a 2-process `--resume`
reuses every stage from it and prints one summary."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rmdiag import distributed
from rmdiag.cli import main
from rmdiag.data import write_parquet
from rmdiag.policies import PolicyConfig, new_policy
from rmdiag.simulate import SimulationConfig, World
from rmdiag.workdir import RECORD_FILE, WORK_DIR
from tests.rmdiag.summaries import comparable

ROOT = Path(__file__).resolve().parents[2]
WORLD = ["--users", "100", "--items", "60", "--mean-events", "15", "--seed", "3"]
# SFT without dropout and for fewer steps than an epoch (one evaluation, after the last step):
# deterministic given the data, so 1 and 2 processes must agree.
TRAIN = ["--max-len", "20", "--policy-hidden", "16", "--policy-blocks", "1",
         "--policy-dropout", "0", "--policy-batch-size", "64", "--policy-threads", "1",
         "--no-policy-progress", "--max-steps", "4"]
# A tiny run whose audit has a sequence member (trained by train_loop, so data-parallel) and
# asks for 2 worker processes (`--audit-threads 2`), which under torchrun must not start.
RUN = [*(f"--sim-{flag[2:]}" if flag.startswith("--") else flag for flag in WORLD),
       "--audit-kinds", "lightgbm,sequence", "--audit-members", "2", "--audit-resamples", "100",
       "--audit-lightgbm-rounds", "10", "--audit-sequence-epochs", "1",
       "--audit-sequence-dim", "16", "--audit-threads", "2", "--max-len", "20",
       "--policy-hidden", "16", "--policy-blocks", "1", "--policy-sft-epochs", "1",
       "--policy-batch-size", "64", "--policy-resamples", "100", "--policy-threads", "1",
       "--no-policy-progress", "--no-sweep", "--policy-post-steps", "3",
       "--no-overoptimization"]
RUN_FILES = {"summary.json", "decision.json", "audit.json", "audit.html", "report.html",
             "per_user.parquet"}


def torchrun(*args: str, timeout: float = 240,
             module: bool = True) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node 2 -m rmdiag ARGS` with this checkout's code
    (`module=False`: `torchrun ... ARGS`, a script and its arguments)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", *(["-m", "rmdiag"] if module else []), *args]
    return subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def leftovers(directory: Path) -> list[Path]:
    """Temporary files or staging directories a racing or dying writer would leave."""
    return [p for p in directory.rglob("*")
            if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


def finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)



@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "log.parquet"
    write_parquet(World(SimulationConfig(n_users=100, n_items=60, mean_events=15.0,
                                         seed=3)).generate(), path)
    return path


def test_without_torchrun_one_process_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert not distributed.active()
    assert distributed.share(lambda: 7) == 7 and distributed.from_main("x") == "x"
    with distributed.process_group():  # nothing to open
        assert not torch.distributed.is_initialized()


EXIT_WORKER = str(Path(__file__).with_name("exit_worker.py"))


def test_ranks_leave_the_group_together_when_rank_0_works_on() -> None:
    # rank 1 used to tear its gloo group down while rank 0 still scored, and aborted now and
    # then in gloo's teardown (CI, 1 run in 5 under load): it now waits for rank 0 to finish
    done = torchrun(EXIT_WORKER, "slow-main", "3", module=False, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # the ranks print at about the same instant: their lines can arrive run together
    ranks = {r["rank"]: r for r in map(json.loads, re.findall(r"\{[^{}]*\}", done.stdout))}
    assert set(ranks) == {0, 1}
    assert ranks[1]["entered_exit"] < ranks[0]["entered_exit"] - 2  # rank 1 was done first
    assert ranks[1]["left"] >= ranks[0]["entered_exit"]  # and left only once rank 0 was done


def test_a_rank_that_fails_alone_does_not_wait_for_the_others() -> None:
    # the exit barrier is for commands that succeeded: a failing rank leaves at once and
    # torchrun ends the other, which would otherwise wait for it at the barrier
    started = time.perf_counter()
    done = torchrun(EXIT_WORKER, "failing-rank", "600", module=False, timeout=300)
    assert done.returncode != 0
    assert "rank 1 fails alone" in done.stderr
    assert time.perf_counter() - started < 240  # not the 600 s rank 0 would wait afterwards


def test_train_with_two_processes_saves_the_one_process_weights(log_file: Path,
                                                                tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "sft", "--data", str(log_file), "--out", str(one), *TRAIN]) == 0
    done = torchrun("train", "sft", "--data", str(log_file), "--out", str(two), *TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1, done.stdout  # rank 0 alone reports
    files = {"model.json", "weights.pt", "ids.json", "training.json"}
    assert {p.name for p in two.iterdir()} == files and not leftovers(tmp_path)
    records = [json.loads((d / "training.json").read_text()) for d in (one, two)]
    assert [r["world_size"] for r in records] == [1, 2]
    assert records[0]["steps"] == records[1]["steps"] == 4
    weights = [torch.load(d / "weights.pt", weights_only=True) for d in (one, two)]
    n_items = json.loads((one / "model.json").read_text())["config"]["n_items"]
    initial = new_policy(n_items, 20, PolicyConfig(hidden=16, n_blocks=1,
                                                   dropout=0.0)).state_dict()
    moved = max(float((weights[0][k] - v).abs().max()) for k, v in initial.items())
    assert moved > 1e-3  # it trained: agreement is not two untouched initializations
    for key, value in weights[0].items():  # the same global batches: the same steps
        assert torch.isfinite(weights[1][key]).all(), key
        assert torch.allclose(value, weights[1][key], atol=5e-5, rtol=1e-4), key


def test_run_with_two_processes_writes_once_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = torchrun("run", "--out", str(out), *RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("rmdiag run: done") == 1  # rank 0 alone names the stages
    assert {p.name for p in out.iterdir()} == RUN_FILES | {WORK_DIR}
    assert not leftovers(out)
    summary = json.loads((out / "summary.json").read_text())
    for name in ("decision.json", "audit.json"):
        json.loads((out / name).read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo"}
    # the ensemble's sequence member trained (in-process, data-parallel) beside LightGBM's
    assert {"lightgbm", "sequence", "ensemble"} <= set(summary["audit"]["models"])
    chosen = summary["decision"]["algorithm"]
    assert set(summary["policies"]) == {"sft", chosen}
    for entry in summary["policies"].values():
        assert entry["ndcg@10"]["value"] is not None and finite(entry)
    stages = json.loads((out / WORK_DIR / RECORD_FILE).read_text())["stages"]
    assert set(stages) == {"audit", "policy:sft", f"policy:{chosen}"}
    assert all(s["done"] and s["status"] == "computed" for s in stages.values())
    assert not any((out / WORK_DIR / "checkpoints").iterdir())  # removed once saved

    again = torchrun("run", "--out", str(out), "--resume", "--json", *RUN)
    assert again.returncode == 0, again.stderr[-3000:]
    printed = json.loads(again.stdout)  # one document: only rank 0 prints
    assert comparable(printed) == comparable(summary)
    stages = json.loads((out / WORK_DIR / RECORD_FILE).read_text())["stages"]
    assert all(s["status"] == "reused" for s in stages.values())
    assert not leftovers(out)
