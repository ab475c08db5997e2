"""Ranking metrics, intervals and the ensemble judge, usable on their own."""

from evaluators.protocols import ContextLike, EnsembleLike, RewardFnLike, ScorerLike

__all__ = ["ContextLike", "EnsembleLike", "RewardFnLike", "ScorerLike"]
