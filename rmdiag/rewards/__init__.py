"""Reward predictors sharing one interface (``RewardModel``): baselines, LightGBM, a causal
transformer, and ensembles of them. Every model is a ``trainers.protocols.RewardFn``."""

from rmdiag.rewards.base import RewardModel, last_event_split
from rmdiag.rewards.baselines import BiasModel, GlobalMean, ItemMean, UserMean
from rmdiag.rewards.ensemble import RewardEnsemble, make_reward_model
from rmdiag.rewards.lightgbm_model import LightGBMRewardModel
from rmdiag.rewards.sequence_model import SequenceRewardModel

# Name -> class, the names used in audit.json and on the command line.
REWARD_MODELS: dict[str, type[RewardModel]] = {
    "global_mean": GlobalMean,
    "user_mean": UserMean,
    "item_mean": ItemMean,
    "bias": BiasModel,
    "lightgbm": LightGBMRewardModel,
    "sequence": SequenceRewardModel,
}
BASELINES: tuple[str, ...] = ("global_mean", "user_mean", "item_mean", "bias")

__all__ = [
    "BASELINES",
    "REWARD_MODELS",
    "BiasModel",
    "GlobalMean",
    "ItemMean",
    "LightGBMRewardModel",
    "RewardEnsemble",
    "RewardModel",
    "SequenceRewardModel",
    "UserMean",
    "last_event_split",
    "make_reward_model",
]
