"""Policy model and post-training algorithms for generative recommenders (pure torch).

`ALGORITHMS` maps each algorithm's name to its ``(Config, train)`` pair; every ``train`` has the
signature ``train(model, data, config, *, reward_fn=None, reference=None, eval_fn=None,
resume_from=None) -> TrainResult``.
"""

from trainers.data import (
    context_data,
    event_data,
    sequence_data,
    sequence_windows,
    sequences_to_events,
)
from trainers.loop import TrainConfig, TrainResult, load_checkpoint, train_loop
from trainers.model import ModelConfig, SequentialRecommender, policy_scores
from trainers.ppo import PPOConfig, train_ppo
from trainers.protocols import Context, EnsembleRewardFn, RewardFn, Scorer
from trainers.sft import (
    ASFTConfig,
    ExpSFTConfig,
    RewardWeightedConfig,
    SFTConfig,
    train_a_sft,
    train_exp_sft,
    train_reward_weighted,
    train_sft,
)

ALGORITHMS = {
    "sft": (SFTConfig, train_sft),
    "rw-bc": (RewardWeightedConfig, train_reward_weighted),
    "exp-sft": (ExpSFTConfig, train_exp_sft),
    "a-sft": (ASFTConfig, train_a_sft),
    "ppo": (PPOConfig, train_ppo),
}

__all__ = [
    "ALGORITHMS",
    "ASFTConfig",
    "Context",
    "EnsembleRewardFn",
    "ExpSFTConfig",
    "ModelConfig",
    "PPOConfig",
    "RewardFn",
    "RewardWeightedConfig",
    "SFTConfig",
    "Scorer",
    "SequentialRecommender",
    "TrainConfig",
    "TrainResult",
    "context_data",
    "event_data",
    "load_checkpoint",
    "policy_scores",
    "sequence_data",
    "sequence_windows",
    "sequences_to_events",
    "train_a_sft",
    "train_exp_sft",
    "train_loop",
    "train_ppo",
    "train_reward_weighted",
    "train_sft",
]
