"""PPO as a one-step contextual bandit against a reward model (DESIGN.md, Algorithms).

Each rollout batch: sample G items per history from π_old (the current policy, history items
excluded), score them with the reward model (ensemble mean − κ·std when it exposes members),
normalize within each group (the group baseline of GRPO, Shao et al. 2024), then take several
epochs of clipped-ratio updates (Schulman et al. 2017) with an exact KL(π ‖ π_ref) penalty: the
full softmax over the catalog is available, so the KL needs no sampling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from trainers.data import (
    TensorData,
    batch_context,
    check_data,
    is_sequence_data,
    sequences_to_events,
)
from trainers.loop import EvalFn, TrainConfig, TrainResult, train_loop
from trainers.model import SequentialRecommender, frozen_copy
from trainers.protocols import Context, RewardFn, Scorer

# A large finite score for masked items: exp() of it is 0, and unlike -inf it gives no NaN in
# π·(log π − log π_ref) or its gradient.
_MASKED = -1e9


@dataclass
class PPOConfig(TrainConfig):
    """One-step PPO. `batch_size` is the number of histories per rollout; one loop step is one
    rollout batch, i.e. ppo_epochs × minibatches optimizer updates."""

    reward_model: ClassVar[str] = "required"

    # RL fine-tuning moves a pre-trained policy: a smaller step than SFT's 1e-3.
    lr: float = 3e-4
    # G: items sampled per history (with replacement); GRPO/ReRe use groups of 4–16.
    group_size: int = 8
    # κ: reward = ensemble mean − κ·std over members (0 = mean only); pessimism against an RM's
    # errors off the logged data.
    pessimism: float = 0.0
    # β: weight of KL(π ‖ π_ref); 0.05 is within the 0.01–0.1 range common in RLHF.
    kl_coef: float = 0.05
    # ε of the clipped ratio (Schulman et al. 2017).
    clip_eps: float = 0.2
    # Passes over each rollout batch and minibatches per pass (PPO's K epochs, M minibatches).
    ppo_epochs: int = 4
    minibatches: int = 2
    # Divide each group's centred rewards by their std (GRPO); else only centre them.
    normalize_advantage: bool = True
    # Sample and score only items outside the user's history (what a recommender would show).
    exclude_history: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 for a group baseline")
        if self.ppo_epochs < 1 or self.minibatches < 1:
            raise ValueError("ppo_epochs and minibatches must be >= 1")


def masked_log_policy(scorer: Scorer, context: Context, exclude_history: bool) -> torch.Tensor:
    """log π(·|s) over the catalog [B, n_items + 1]; padding (and history) get ~zero mass."""
    scores = scorer(context).float()
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, 0] = True
    if exclude_history:
        mask.scatter_(1, context.history_items, True)
    return torch.log_softmax(scores.masked_fill(mask, _MASKED), dim=1)


def pessimistic_reward(
    reward_fn: RewardFn, context: Context, items: torch.Tensor, pessimism: float
) -> torch.Tensor:
    """R̂ for each sampled item: ensemble mean − κ·std if the model has `.members`, else R̂."""
    members = getattr(reward_fn, "members", None)
    if pessimism > 0 and members is not None:
        predictions = members(context, items).float()
        return predictions.mean(0) - pessimism * predictions.std(0)
    return reward_fn(context, items).float()


def ppo_loss(model: SequentialRecommender, batch: TensorData, config: PPOConfig):
    """Clipped surrogate on the sampled items plus β·KL(π ‖ π_ref), summed; normalizer = B·G."""
    log_policy = masked_log_policy(model, batch_context(batch), config.exclude_history)
    log_prob = log_policy.gather(1, batch["samples"])
    ratio = torch.exp(log_prob - batch["old_log_probs"])
    advantage = batch["advantages"]
    surrogate = torch.minimum(
        ratio * advantage, ratio.clamp(1 - config.clip_eps, 1 + config.clip_eps) * advantage
    )
    kl = (log_policy.exp() * (log_policy - batch["reference_log_policy"])).sum(1)
    group = batch["samples"].shape[1]
    total = -surrogate.sum() + config.kl_coef * group * kl.sum()
    return total, log_prob.new_tensor(float(log_prob.numel()))


def train_ppo(
    model: SequentialRecommender,
    data: TensorData,
    config: PPOConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """PPO from the histories in ``data`` (contexts, events, or sequences unrolled to events).

    ``reference`` (π_ref of the KL term) defaults to a frozen copy of ``model`` as given, normally
    the SFT policy PPO starts from. Dropout is off during PPO so that π_old and π agree exactly
    before the first update (ratio 1), as in RLHF practice.
    """
    if reward_fn is None:
        raise ValueError("ppo needs a reward_fn to optimize")
    config = config or PPOConfig()
    data = check_data(data)
    if is_sequence_data(data):
        data = sequences_to_events(data)
    data = {key: data[key] for key in ("users", "history_items", "history_rewards")}
    reference = frozen_copy(model if reference is None else reference, config.device)

    @torch.no_grad()
    def rollout(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()
        context = batch_context(batch)
        old_log_policy = masked_log_policy(module, context, config.exclude_history)
        reference_log_policy = masked_log_policy(reference, context, config.exclude_history)
        samples = torch.multinomial(
            old_log_policy.exp(), config.group_size, replacement=True, generator=generator
        )
        reward = pessimistic_reward(reward_fn, context, samples, config.pessimism)
        advantage = reward - reward.mean(1, keepdim=True)
        if config.normalize_advantage:
            advantage = advantage / (reward.std(1, keepdim=True) + 1e-6)
        rollout_batch = {
            **batch,
            "samples": samples,
            "old_log_probs": old_log_policy.gather(1, samples),
            "advantages": advantage,
            "reference_log_policy": reference_log_policy,
        }
        n_rows = len(context)
        if n_rows < config.minibatches:
            raise ValueError(
                f"a rollout of {n_rows} histories (per process) cannot make "
                f"{config.minibatches} minibatches; raise batch_size"
            )
        minibatches = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(n_rows, generator=generator, device=generator.device)
            # exactly `minibatches` pieces on every rank, so DDP ranks step in lockstep
            for rows in order.tensor_split(config.minibatches):
                minibatches.append({key: value[rows] for key, value in rollout_batch.items()})
        return minibatches

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()  # no dropout: see docstring
        return ppo_loss(module, batch, config)

    return train_loop(
        model, data, loss_fn, config, prepare=rollout, eval_fn=eval_fn, resume_from=resume_from
    )
