"""Trains tiny policies under torchrun (gloo), whole or interrupted, or resumes the interrupted
ones; rank 0 saves the weights.

Used by test_loop.py::test_two_process_resume_is_exact. Usage: ddp_resume_worker.py OUT DIR
MODE. MODE `first`: each algorithm trained uninterrupted, then again with a checkpoint in DIR
every 3 steps and a crash after step 4; `resume`: the interrupted runs resumed from DIR. SFT with
dropout and DPO sampling its candidates from the loop's generator: both draw different random
numbers on each rank, so a rank restoring another's random state diverges.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers import ALGORITHMS, Context, ModelConfig, SequentialRecommender, sequence_data  # noqa: E402
from trainers.testing import NoisyEnsemble  # noqa: E402

STEPS, EVERY, CRASH_AFTER = 6, 3, 4


class Crash(Exception):
    pass


def _reward(context: Context, items: torch.Tensor) -> torch.Tensor:
    return (items % 7).float()


def main(out: str, directory: str, mode: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # one group for every run (the loop then leaves it alone)
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 31, (64, 9), generator=generator)
    data = sequence_data(items, torch.rand(items.shape, generator=generator) + 0.1)
    torch.manual_seed(0)
    initial = SequentialRecommender(
        ModelConfig(n_items=30, hidden=16, n_blocks=1, n_heads=2, max_len=8, dropout=0.3)
    )
    settings = dict(lr=1e-2, batch_size=16, max_steps=STEPS, progress=False, warmup_steps=2,
                    schedule="cosine", eval_every=1, checkpoint_every=EVERY)
    runs = {
        "sft": ({}, {}),
        "dpo": ({"n_candidates": 4, "interval_z": 0.5},
                {"reward_fn": NoisyEnsemble(_reward, 30, noise=1.0, shared=0.0),
                 "reference": copy.deepcopy(initial)}),
    }
    saved: dict[str, object] = {}
    for name, (overrides, inputs) in runs.items():
        config_class, train = ALGORITHMS[name]
        path = str(Path(directory) / f"{name}.pt")
        config = config_class(**settings, **overrides, checkpoint_path=path)
        if mode == "first":
            whole = copy.deepcopy(initial)
            train(whole, data, config_class(**settings, **overrides), eval_fn=lambda m: {},
                  **inputs)
            evals = {"n": 0}

            def crash(model: torch.nn.Module, evals: dict[str, int] = evals) -> dict[str, float]:
                evals["n"] += 1
                if evals["n"] > CRASH_AFTER:
                    raise Crash
                return {}

            try:
                train(copy.deepcopy(initial), data, config, eval_fn=crash, **inputs)
            except Crash:
                pass
            saved[name] = whole.state_dict()
        else:
            resumed = copy.deepcopy(initial)
            result = train(resumed, data, config, eval_fn=lambda m: {}, resume_from=path,
                           **inputs)
            assert result.steps == STEPS
            saved[name] = resumed.state_dict()
    rank = dist.get_rank()
    # every rank done before the group goes: under load a rank that tore gloo down while its
    # peer still finished its last step aborted ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch.save(saved, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
