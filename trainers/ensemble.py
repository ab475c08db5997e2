"""What the trainers read from a reward ensemble: its members, their spread, reward intervals.

An `EnsembleRewardFn` exposes ``members(context, items) -> [M, B, K]``. Its spread is the
*population* standard deviation over members, ``members.std(0, unbiased=False)``, the same figure
as ``rmdiag.rewards.RewardEnsemble.spread``, so a pessimism κ or an interval half-width z means
the same thing in the audit, in PPO and in DPO/IPO's rejection sampling. (The unbiased estimator
would be sqrt(M / (M − 1)) larger: ×1.118 at 5 members.)
"""

from __future__ import annotations

import torch

from trainers.protocols import Context, RewardFn


def require_members(reward_fn: RewardFn, purpose: str) -> None:
    """Refuse a reward function without ``.members`` where member statistics are asked for."""
    if not callable(getattr(reward_fn, "members", None)):
        raise ValueError(
            f"{purpose} needs a reward ensemble exposing members(context, items) -> [M, B, K]; "
            f"{type(reward_fn).__name__} has no members"
        )


def member_predictions(reward_fn: RewardFn, context: Context, items: torch.Tensor) -> torch.Tensor:
    """Every member's predicted reward of each candidate, float [M, B, K]."""
    require_members(reward_fn, "member statistics")
    predictions = reward_fn.members(context, items).float()  # type: ignore[attr-defined]
    if predictions.dim() != 3 or predictions.shape[1:] != items.shape:
        raise ValueError(
            f"members(context, items) must be [M, B, K] = [M, {', '.join(map(str, items.shape))}]"
            f", got {tuple(predictions.shape)}"
        )
    return predictions


def member_spread(predictions: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over members (dim 0), as RewardEnsemble.spread."""
    return predictions.std(0, unbiased=False)


def reward_interval(
    reward_fn: RewardFn, context: Context, items: torch.Tensor, z: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, mean − z·spread, mean + z·spread) of the members' predictions, each [B, K].

    With z = 0 a plain reward function (no members) is allowed: its prediction is all three.
    """
    if z == 0 and not callable(getattr(reward_fn, "members", None)):
        mean = reward_fn(context, items).float()
        return mean, mean, mean
    predictions = member_predictions(reward_fn, context, items)
    mean, spread = predictions.mean(0), member_spread(predictions)
    return mean, mean - z * spread, mean + z * spread
