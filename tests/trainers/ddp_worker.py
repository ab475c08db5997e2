"""Trains a tiny SFT policy and saves its weights; run directly or under torchrun (gloo).

Used by test_loop.py::test_two_process_torchrun_matches_one_process. Usage: ddp_worker.py OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainers import ModelConfig, SequentialRecommender, SFTConfig, sequence_data, train_sft  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 31, (64, 9), generator=generator)
    items[::3, :4] = 0  # some padding, so ranks hold different numbers of targets
    data = sequence_data(items, torch.rand(items.shape, generator=generator))
    torch.manual_seed(0)
    model = SequentialRecommender(
        ModelConfig(n_items=30, hidden=16, n_blocks=1, n_heads=2, max_len=8, dropout=0.0)
    )
    config = SFTConfig(lr=1e-2, batch_size=16, max_steps=6, progress=False, warmup_steps=2,
                       schedule="cosine")
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    result = train_sft(model, data, config)
    if int(os.environ.get("RANK", "0")) == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        torch.save({"state": model.state_dict(), "initial": initial, "steps": result.steps,
                    "world": world}, out)


if __name__ == "__main__":
    main(sys.argv[1])
