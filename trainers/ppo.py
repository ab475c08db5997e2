"""PPO as a one-step contextual bandit against a reward model (DESIGN.md, Algorithms).

Each rollout batch: sample G items per history from π_old (the current policy, history items
excluded), score them with the reward model (with κ > 0, ensemble mean − κ·std over its members,
the population std of `trainers.ensemble`), normalize within each group (the group baseline of
GRPO, Shao et al. 2024), then take several epochs of clipped-ratio updates (Schulman et al. 2017)
with an exact KL(π ‖ π_ref) penalty: the full softmax over the catalog is available, so the KL
needs no sampling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from trainers.data import (
    TensorData,
    batch_context,
    rollout_histories,
)
from trainers.ensemble import require_members, reward_interval
from trainers.loop import EvalFn, TrainConfig, TrainResult, describe, train_loop
from trainers.model import SequentialRecommender, reference_policy
from trainers.protocols import Context, RewardFn, Scorer

# A large finite score for masked items: exp() of it is 0, and unlike -inf it gives no NaN in
# π·(log π − log π_ref) or its gradient.
MASKED_SCORE = -1e9


@dataclass
class PPOConfig(TrainConfig):
    """One-step PPO. `batch_size` is the number of histories per rollout; one loop step is one
    rollout batch, i.e. ppo_epochs × minibatches optimizer updates."""

    reward_model: ClassVar[str] = "required"
    uses_reference: ClassVar[bool] = True

    lr: float = field(default=3e-4, metadata=describe(
        "AdamW step size; RL fine-tuning moves a pre-trained policy: a smaller step than SFT's "
        "1e-3"))
    group_size: int = field(default=8, metadata=describe(
        "G: items sampled per history (with replacement); GRPO/ReRe use groups of 4-16"))
    pessimism: float = field(default=0.0, metadata=describe(
        "κ: reward = ensemble mean − κ·std over members (population std, as the audit's "
        "spread; 0 = the reward function's prediction); pessimism against an RM's errors off the "
        "logged data; κ > 0 needs a reward ensemble with members"))
    kl_coef: float = field(default=0.05, metadata=describe(
        "β: weight of KL(π ‖ π_ref); 0.05 is within the 0.01-0.1 range common in RLHF"))
    clip_eps: float = field(default=0.2, metadata=describe(
        "ε of the clipped ratio (Schulman et al. 2017)"))
    ppo_epochs: int = field(default=4, metadata=describe(
        "passes over each rollout batch (PPO's K epochs)"))
    minibatches: int = field(default=2, metadata=describe(
        "minibatches per pass over a rollout batch (PPO's M minibatches)"))
    normalize_advantage: bool = field(default=True, metadata=describe(
        "divide each group's centred rewards by their std (GRPO); else only centre them"))
    exclude_history: bool = field(default=True, metadata=describe(
        "sample and score only items outside the user's history (what a recommender would "
        "show)"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.group_size < 2:
            problems.append(f"group_size must be >= 2 for a group baseline, got {self.group_size}")
        if not self.pessimism >= 0:
            problems.append(f"pessimism must be >= 0, got {self.pessimism}")
        if not self.kl_coef >= 0:
            problems.append(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not self.clip_eps > 0:
            problems.append(f"clip_eps must be > 0, got {self.clip_eps}")
        if self.ppo_epochs < 1 or self.minibatches < 1:
            problems.append("ppo_epochs and minibatches must be >= 1")
        return problems


def masked_log_policy(scorer: Scorer, context: Context, exclude_history: bool) -> torch.Tensor:
    """log π(·|s) over the catalog [B, n_items + 1]; padding (and history) get ~zero mass."""
    scores = scorer(context).float()
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, 0] = True
    if exclude_history:
        mask.scatter_(1, context.history_items, True)
    return torch.log_softmax(scores.masked_fill(mask, MASKED_SCORE), dim=1)


def pessimistic_reward(
    reward_fn: RewardFn, context: Context, items: torch.Tensor, pessimism: float
) -> torch.Tensor:
    """R̂ for each item: ensemble mean − κ·spread (population std over members) when κ > 0,
    which needs ``.members`` (a ValueError without); R̂ itself when κ = 0."""
    if pessimism > 0:
        return reward_interval(reward_fn, context, items, pessimism)[1]
    return reward_fn(context, items).float()


def exact_kl(log_policy: torch.Tensor, reference_log_policy: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) per history from full log-policies over the catalog [B, n_items + 1] -> [B]."""
    return (log_policy.exp() * (log_policy - reference_log_policy)).sum(1)


def clipped_policy_loss(
    log_policy: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    reference_log_policy: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO's objective on G actions per history: −min(ρA, clip(ρ, 1±ε)A) + β·KL(π ‖ π_ref).

    log_policy / reference_log_policy: [B, n_items + 1]; actions, old_log_probs, advantages:
    [B, G]; ρ = π(a|s) / π_old(a|s). The KL is exact over the catalog, counted once per action so
    that the mean over the B·G actions (the normalizer) is mean surrogate + β·mean KL.
    """
    log_prob = log_policy.gather(1, actions)
    ratio = torch.exp(log_prob - old_log_probs)
    surrogate = torch.minimum(
        ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    )
    kl = exact_kl(log_policy, reference_log_policy)
    total = -surrogate.sum() + kl_coef * actions.shape[1] * kl.sum()
    clipped = ((ratio - 1).abs() > clip_eps).float().mean()
    scalars = {"kl": kl.mean().detach(), "clip_fraction": clipped.detach()}
    return total, log_prob.new_tensor(float(log_prob.numel())), scalars


def rollout_minibatches(rollout: TensorData, epochs: int, minibatches: int,
                        generator: torch.Generator) -> list[TensorData]:
    """A rollout batch cut into `minibatches` random pieces, once per epoch (PPO's K epochs of M
    minibatches): exactly `minibatches` pieces on every rank, so DDP ranks step in lockstep."""
    n_rows = int(next(iter(rollout.values())).shape[0])
    if n_rows < minibatches:
        raise ValueError(
            f"a rollout of {n_rows} histories (per process) cannot make "
            f"{minibatches} minibatches; raise batch_size"
        )
    pieces = []
    for _ in range(epochs):
        order = torch.randperm(n_rows, generator=generator, device=generator.device)
        for rows in order.tensor_split(minibatches):
            pieces.append({key: value[rows] for key, value in rollout.items()})
    return pieces


def ppo_loss(model: SequentialRecommender, batch: TensorData, config: PPOConfig):
    """Clipped surrogate on the sampled items plus β·KL(π ‖ π_ref), summed; normalizer = B·G."""
    log_policy = masked_log_policy(model, batch_context(batch), config.exclude_history)
    total, normalizer, scalars = clipped_policy_loss(
        log_policy, batch["samples"], batch["old_log_probs"], batch["advantages"],
        batch["reference_log_policy"], config.clip_eps, config.kl_coef,
    )
    return total, normalizer, {**scalars, "reward": batch["rewards"].mean()}


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
    the SFT policy PPO starts from (a resumed run must pass it). Dropout is off during PPO so
    that π_old and π agree exactly before the first update (ratio 1), as in RLHF practice.
    """
    if reward_fn is None:
        raise ValueError("ppo needs a reward_fn to optimize")
    config = config or PPOConfig()
    if config.pessimism > 0:
        require_members(reward_fn, f"ppo with pessimism {config.pessimism} > 0")
    data = rollout_histories(data)
    reference = reference_policy(model, reference, resume_from, config.device)

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
            "rewards": reward,
            "reference_log_policy": reference_log_policy,
        }
        return rollout_minibatches(rollout_batch, config.ppo_epochs, config.minibatches,
                                   generator)

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()  # no dropout: see docstring
        return ppo_loss(module, batch, config)

    return train_loop(
        model, data, loss_fn, config, prepare=rollout, eval_fn=eval_fn, resume_from=resume_from
    )
