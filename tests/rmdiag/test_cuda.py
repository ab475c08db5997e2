"""The GPU path: every training stage on CUDA when the machine has a device, refused up front
(exit 2, naming the flag) when it has none.

The CUDA tests are skipped with their reason on a CPU-only machine (CI); on a GPU machine they
train each stage on the device and check that what comes back (policies, reward models, saved
files) is CPU-side and agrees with the CPU run in shape and sense.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rmdiag.cli import main
from rmdiag.data import Interactions
from rmdiag.rewards import SequenceRewardModel
from trainers.loop import device_problem

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (this machine has none; the project's `device` tool lends one "
           "to some sessions)")

FAST_RUN = ["--sim-users", "60", "--sim-items", "40", "--max-len", "12",
            "--audit-kinds", "lightgbm,sequence", "--audit-members", "2",
            "--audit-resamples", "200", "--audit-lightgbm-rounds", "10",
            "--audit-sequence-epochs", "2", "--audit-threads", "1", "--no-sweep",
            "--policy-hidden", "16", "--policy-sft-epochs", "2", "--policy-post-steps", "3",
            "--policy-resamples", "200", "--no-policy-progress"]


def test_device_names_are_checked_for_form_and_for_this_machine() -> None:
    assert device_problem("cpu") is None
    assert "torch device" in str(device_problem("tpu:0"))
    assert device_problem("cuda", here=False) is None  # the form only: a file from a GPU box
    if not torch.cuda.is_available():
        assert "no CUDA device" in str(device_problem("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
@pytest.mark.parametrize("flag", ["--policy-device", "--audit-sequence-device"])
def test_a_cuda_flag_without_a_device_exits_2_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), flag, "cuda", *FAST_RUN]) == 2
    assert f"{flag}: device 'cuda': no CUDA device" in capsys.readouterr().err
    assert not out.exists()


@needs_cuda
def test_sequence_reward_model_trains_on_cuda_and_predicts_on_the_cpu(
    world_split: tuple[Interactions, Interactions, Interactions],
) -> None:
    fit, tune, test = world_split
    on_gpu = SequenceRewardModel(epochs=2, seed=0, device="cuda").fit(fit, tune)
    on_cpu = SequenceRewardModel(epochs=2, seed=0).fit(fit, tune)
    assert next(on_gpu.network_.parameters()).device.type == "cpu"
    gpu_pred = on_gpu.predict_events(fit, test)
    cpu_pred = on_cpu.predict_events(fit, test)
    assert gpu_pred.shape == cpu_pred.shape and np.isfinite(gpu_pred).all()
    # not bit-identical (CUDA kernels sum in another order); the same model to within noise
    assert np.corrcoef(gpu_pred, cpu_pred)[0, 1] > 0.9


@needs_cuda
def test_rmdiag_run_trains_policies_and_sequence_members_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--policy-device", "cuda",
                 "--audit-sequence-device", "cuda", "--compare", "ppo", *FAST_RUN])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_config"]["device"] == "cuda"
    assert {"sft", "ppo"} <= set(summary["policies"])  # PPO asks the CPU ensemble from CUDA
    for figures in summary["policies"].values():
        assert np.isfinite(figures["ndcg@10"]["value"])


@needs_cuda
def test_rmdiag_train_sft_on_cuda_saves_cpu_weights(tmp_path: Path) -> None:
    data = tmp_path / "log.parquet"
    assert main(["simulate", "--out", str(data), "--users", "60", "--items", "40"]) == 0
    out = tmp_path / "sft"
    assert main(["train", "sft", "--data", str(data), "--out", str(out), "--device", "cuda",
                 "--max-len", "12", "--policy-hidden", "16", "--policy-sft-epochs", "2",
                 "--no-policy-progress"]) == 0
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert all(tensor.device.type == "cpu" for tensor in weights.values())
