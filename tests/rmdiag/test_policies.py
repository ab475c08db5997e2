"""rmdiag.policies pieces that need no training: the slate value of a user with few items left."""

from __future__ import annotations

import numpy as np
import torch

from rmdiag.policies import slate_value
from trainers.model import ModelConfig, SequentialRecommender
from trainers.protocols import Context

N_ITEMS = 20


def test_slate_value_of_a_user_with_fewer_items_left_than_k_skips_the_excluded_ones() -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(ModelConfig(n_items=N_ITEMS, hidden=8, n_blocks=1, n_heads=1,
                                              max_len=18))
    history = torch.zeros(2, 18, dtype=torch.long)
    history[0] = torch.arange(1, 19)  # user 0 has only items 19 and 20 left
    history[1, -1] = 5
    context = Context(torch.tensor([1, 2]), history, torch.ones(2, 18))

    def reward(context: Context, items: torch.Tensor) -> torch.Tensor:
        assert (items >= 1).all(), "the padding item was scored"
        return items.float()  # reward = item id

    values = slate_value(model, context, reward, k=5, gamma=0.5)
    # user 0's slate is {19, 20} in the model's order: its value lies between the two ids, with
    # the weights of two positions (1 and 0.5, renormalized)
    assert 19 + 1 / 3 - 1e-9 <= values[0] <= 20 - 1 / 3 + 1e-9
    assert np.isfinite(values).all()
