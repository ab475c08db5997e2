"""Trains tiny policies with several algorithms and saves their weights; run directly or under
torchrun (gloo).

Used by test_loop.py::test_two_process_torchrun_matches_one_process. Usage: ddp_worker.py OUT.
SFT, CQL and GRPO (top-G candidates) are deterministic given the data, so one and two processes
must agree; DPO samples its candidates from each rank's own generator, so it is only checked to
train (with ranks holding different numbers of kept pairs).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers import ALGORITHMS, Context, ModelConfig, SequentialRecommender, sequence_data  # noqa: E402
from trainers.testing import NoisyEnsemble  # noqa: E402


def _reward(context: Context, items: torch.Tensor) -> torch.Tensor:
    return (items % 7).float()


def main(out: str) -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # one process group for all the runs below (the loop then leaves it alone)
        dist.init_process_group("gloo")
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 31, (64, 9), generator=generator)
    items[::3, :4] = 0  # some padding, so ranks hold different numbers of targets
    data = sequence_data(items, torch.rand(items.shape, generator=generator) + 0.1)
    torch.manual_seed(0)
    initial_model = SequentialRecommender(
        ModelConfig(n_items=30, hidden=16, n_blocks=1, n_heads=2, max_len=8, dropout=0.0)
    )
    settings = dict(lr=1e-2, batch_size=16, max_steps=6, progress=False, warmup_steps=2,
                    schedule="cosine")
    runs = {
        "sft": ({}, {}),
        "cql": ({"alpha": 0.5}, {}),
        "grpo": ({"group_size": 4}, {}),
        "dpo": ({"n_candidates": 4, "interval_z": 0.5},
                {"reward_fn": NoisyEnsemble(_reward, 30, noise=1.0, shared=0.0)}),
    }
    saved: dict[str, object] = {"world": world,
                                "initial": {k: v.clone() for k, v in
                                            initial_model.state_dict().items()}}
    for name, (overrides, inputs) in runs.items():
        config_class, train = ALGORITHMS[name]
        model = copy.deepcopy(initial_model)
        result = train(model, data, config_class(**settings, **overrides), **inputs)
        saved[name] = {"state": model.state_dict(), "steps": result.steps}
    if world > 1:
        dist.barrier()  # every rank done before the group goes (see ddp_resume_worker.py)
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(saved, out)


if __name__ == "__main__":
    main(sys.argv[1])
