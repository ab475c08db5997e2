"""The batch and function shapes that `trainers` exchanges with the rest of the world.

`Context` is the concrete dataclass (DESIGN.md, Protocols). `evaluators` types the same three
attributes as a `typing.Protocol`, so neither leaf package imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Context:
    """A batch of users: ids and their left-padded histories (item 0 = padding).

    users: LongTensor[B]; history_items: LongTensor[B, L]; history_rewards: FloatTensor[B, L];
    history_timestamps: LongTensor[B, L] or None, each history event's time (seconds; padding's
    is ignored) -- only the HSTU architecture reads it (its relative time bias).
    """

    users: torch.Tensor
    history_items: torch.Tensor
    history_rewards: torch.Tensor
    history_timestamps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.history_items.shape != self.history_rewards.shape:
            raise ValueError(
                "history_items and history_rewards must have the same shape, got "
                f"{tuple(self.history_items.shape)} and {tuple(self.history_rewards.shape)}"
            )
        if self.history_items.dim() != 2 or self.users.shape[0] != self.history_items.shape[0]:
            raise ValueError("expected users [B] and histories [B, L]")
        if (self.history_timestamps is not None
                and self.history_timestamps.shape != self.history_items.shape):
            raise ValueError(
                "history_timestamps must have the shape of history_items, got "
                f"{tuple(self.history_timestamps.shape)} and {tuple(self.history_items.shape)}"
            )

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str) -> Context:
        times = self.history_timestamps
        return Context(
            self.users.to(device), self.history_items.to(device), self.history_rewards.to(device),
            None if times is None else times.to(device),
        )

    def index(self, rows: torch.Tensor | slice) -> Context:
        """The sub-batch of the given rows."""
        times = self.history_timestamps
        return Context(self.users[rows], self.history_items[rows], self.history_rewards[rows],
                       None if times is None else times[rows])


@runtime_checkable
class RewardFn(Protocol):
    """Predicted reward of each candidate for each user: (context, items[B, K]) -> [B, K]."""

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class EnsembleRewardFn(RewardFn, Protocol):
    """A reward ensemble also exposes its members' predictions, FloatTensor[M, B, K]."""

    def members(self, context: Context, items: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Scorer(Protocol):
    """A policy's scores over the full catalog: (context) -> FloatTensor[B, n_items + 1].

    Column 0 is the padding item; callers mask it.
    """

    def __call__(self, context: Context) -> torch.Tensor: ...
