"""Policy model and post-training algorithms for generative recommenders (pure torch)."""

from trainers.protocols import Context, EnsembleRewardFn, RewardFn, Scorer

__all__ = ["Context", "EnsembleRewardFn", "RewardFn", "Scorer"]
