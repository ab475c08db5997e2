"""Policy model and post-training algorithms for generative recommenders (pure torch).

`ALGORITHMS` maps each algorithm's name to its ``(Config, train)`` pair; every ``train`` has the
signature ``train(model, data, config, *, reward_fn=None, reference=None, eval_fn=None,
resume_from=None) -> TrainResult`` and runs on the one training loop (`trainers.loop`):

- from observed rewards only: ``sft``, ``rw-bc`` (reward-weighted BC), ``exp-sft`` (weights
  exp(r/λ)), ``cql`` (one-step discrete CQL, the policy softmax(Q/τ));
- with a reward model: ``a-sft`` (advantage-weighted SFT; the user's mean reward without one),
  ``ppo`` (one-step PPO with ensemble pessimism), ``dpo`` and ``ipo`` (pairs from Netflix's
  interval-based rejection sampling over a reward ensemble);
- from the logged next item as a verifiable reward: ``grpo`` (ReRe-style, beam-search
  candidates, constrained to valid codes for semantic-id items via `trainers.semantic_ids`).

Every Config field carries its help text in ``field(metadata={"help": ...})`` and every config
validates itself when built.
"""

from trainers.cql import CQLConfig, train_cql
from trainers.data import (
    context_data,
    event_data,
    sequence_data,
    sequence_windows,
    sequences_to_events,
)
from trainers.dpo import DPOConfig, IPOConfig, train_dpo, train_ipo
from trainers.ensemble import member_spread, reward_interval
from trainers.grpo import GRPOConfig, train_grpo
from trainers.loop import TrainConfig, TrainResult, drawn_rows, load_checkpoint, train_loop
from trainers.model import (
    ModelConfig,
    SequentialRecommender,
    policy_scores,
    policy_user_states,
)
from trainers.ppo import PPOConfig, train_ppo
from trainers.protocols import Context, EnsembleRewardFn, RewardFn, Scorer
from trainers.semantic_ids import PrefixTrie, constrained_beam_search
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
    "dpo": (DPOConfig, train_dpo),
    "ipo": (IPOConfig, train_ipo),
    "cql": (CQLConfig, train_cql),
    "grpo": (GRPOConfig, train_grpo),
}

__all__ = [
    "ALGORITHMS",
    "ASFTConfig",
    "CQLConfig",
    "Context",
    "DPOConfig",
    "EnsembleRewardFn",
    "ExpSFTConfig",
    "GRPOConfig",
    "IPOConfig",
    "ModelConfig",
    "PPOConfig",
    "PrefixTrie",
    "RewardFn",
    "RewardWeightedConfig",
    "SFTConfig",
    "Scorer",
    "SequentialRecommender",
    "TrainConfig",
    "TrainResult",
    "constrained_beam_search",
    "context_data",
    "drawn_rows",
    "event_data",
    "load_checkpoint",
    "member_spread",
    "policy_scores",
    "policy_user_states",
    "reward_interval",
    "sequence_data",
    "sequence_windows",
    "sequences_to_events",
    "train_a_sft",
    "train_cql",
    "train_dpo",
    "train_exp_sft",
    "train_grpo",
    "train_ipo",
    "train_loop",
    "train_ppo",
    "train_reward_weighted",
    "train_sft",
]
