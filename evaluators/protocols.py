"""Structural types for what `evaluators` consumes (DESIGN.md, Protocols).

These mirror `trainers.protocols` attribute for attribute; they are Protocols so that any object
with the right shape (ours or a user's) works, and so `evaluators` imports no other project package.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ContextLike(Protocol):
    """A batch of users: users[B], left-padded history_items[B, L] and history_rewards[B, L]."""

    users: torch.Tensor
    history_items: torch.Tensor
    history_rewards: torch.Tensor


@runtime_checkable
class RewardFnLike(Protocol):
    """(context, items[B, K]) -> predicted rewards [B, K]."""

    def __call__(self, context: ContextLike, items: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class EnsembleLike(RewardFnLike, Protocol):
    """A reward function that also exposes its M members: (context, items) -> [M, B, K]."""

    def members(self, context: ContextLike, items: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScorerLike(Protocol):
    """(context) -> scores over the full catalog [B, n_items + 1]; column 0 is padding."""

    def __call__(self, context: ContextLike) -> torch.Tensor: ...
