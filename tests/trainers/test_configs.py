import dataclasses

import pytest

from trainers import (
    ALGORITHMS,
    ASFTConfig,
    CQLConfig,
    DPOConfig,
    ExpSFTConfig,
    GRPOConfig,
    IPOConfig,
    ModelConfig,
    PPOConfig,
    RewardWeightedConfig,
    SFTConfig,
    TrainConfig,
)


@pytest.mark.parametrize("config_class",
                         [ModelConfig, TrainConfig, *(c for c, _ in ALGORITHMS.values())])
def test_every_field_documents_itself_for_the_command_line(config_class: type) -> None:
    config_class(**({"n_items": 10} if config_class is ModelConfig else {}))  # defaults valid
    for field in dataclasses.fields(config_class):
        text = field.metadata.get("help", "")
        assert len(text) > 10, f"{config_class.__name__}.{field.name} has no help text"


def test_overridden_defaults_keep_their_own_help() -> None:
    lr = {f.name: f for f in dataclasses.fields(PPOConfig)}["lr"]
    assert lr.default == 3e-4 and "RL fine-tuning" in lr.metadata["help"]
    beta = {f.name: f for f in dataclasses.fields(IPOConfig)}["beta"]
    assert "Azar" in beta.metadata["help"]
    assert "Rafailov" in {f.name: f for f in dataclasses.fields(DPOConfig)}["beta"].metadata["help"]
    assert GRPOConfig().kl_coef == 1e-3


BAD_VALUES = [
    (TrainConfig, "lr", 0.0), (TrainConfig, "weight_decay", -1.0), (TrainConfig, "beta2", 1.0),
    (TrainConfig, "batch_size", 0), (TrainConfig, "epochs", 0.0), (TrainConfig, "max_steps", 0),
    (TrainConfig, "warmup_steps", -1), (TrainConfig, "schedule", "linear"),
    (TrainConfig, "min_lr_ratio", 1.5), (TrainConfig, "grad_clip", 0.0),
    (TrainConfig, "eval_every", -1), (TrainConfig, "patience", 0),
    (TrainConfig, "max_seconds", 0.0), (TrainConfig, "checkpoint_every", -2),
    (SFTConfig, "n_negatives", -1), (RewardWeightedConfig, "min_reward", float("nan")),
    (ExpSFTConfig, "lam", 0.0), (ExpSFTConfig, "max_weight", 0.0),
    (ASFTConfig, "beta", -1.0), (ASFTConfig, "max_weight", 0.0),
    (ASFTConfig, "baseline_batch_size", 0), (ASFTConfig, "baseline_samples", 1),
    (ASFTConfig, "baseline_samples", -2),
    (PPOConfig, "group_size", 1), (PPOConfig, "pessimism", -0.5), (PPOConfig, "kl_coef", -1.0),
    (PPOConfig, "clip_eps", 0.0), (PPOConfig, "ppo_epochs", 0), (PPOConfig, "minibatches", 0),
    (DPOConfig, "beta", 0.0), (DPOConfig, "n_candidates", 1), (DPOConfig, "interval_z", -1.0),
    (IPOConfig, "beta", -0.1), (CQLConfig, "alpha", -1.0), (CQLConfig, "temperature", 0.0),
    (GRPOConfig, "group_size", 1), (GRPOConfig, "kl_coef", -1e-3), (GRPOConfig, "clip_eps", 0.0),
    (GRPOConfig, "grpo_epochs", 0), (GRPOConfig, "minibatches", 0),
    (GRPOConfig, "min_target_reward", float("nan")),
]


@pytest.mark.parametrize(("config_class", "name", "value"), BAD_VALUES)
def test_configs_reject_bad_values(config_class: type, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        config_class(**{name: value})
    # every subclass inherits the check, and dataclasses.replace (the CLI's path) runs it too
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(config_class(), **{name: value})


def test_model_config_rejects_a_shape_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(n_items=10, n_heads=0)


def test_infinite_temperatures_are_the_sft_limits() -> None:
    assert ExpSFTConfig(lam=float("inf")).lam == float("inf")
    assert ASFTConfig(beta=float("inf")).beta == float("inf")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as error:
        PPOConfig(lr=-1.0, group_size=1, clip_eps=0.0)
    message = str(error.value)
    assert message.startswith("invalid PPOConfig")
    assert all(name in message for name in ("lr", "group_size", "clip_eps"))
