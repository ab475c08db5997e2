import pytest
import torch

from trainers import Context


def test_context_checks_shapes_and_indexes_rows() -> None:
    ctx = Context(torch.arange(3), torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4))
    assert len(ctx) == 3
    sub = ctx.index(torch.tensor([0, 2]))
    assert sub.users.tolist() == [0, 2] and sub.history_items.shape == (2, 4)
    with pytest.raises(ValueError, match="same shape"):
        Context(torch.arange(3), torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 5))
