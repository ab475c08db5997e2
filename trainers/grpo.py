"""ReRe-style GRPO for next-item recommendation (Tan et al. 2025, arXiv 2510.12211).

Each loop step is one rollout batch of logged events (history, next item = the target):

1. G distinct candidates per history by beam search over the policy, history excluded. For plain
   item ids one decoding step of width G is the top-G of π; for semantic-id items (each a code of
   D tokens) it is beam search constrained to valid codes by a prefix trie
   (`trainers.semantic_ids`), over the token model the item-level policy implies.
2. Rule-based reward (no reward model): 1 for the target; when the target is among the
   candidates, the negative at beam rank i (0-based, best first) gets the ranking penalty
   −(1/log2(i+2)) / Σ_{j<G} 1/log2(j+2), so the most plausible wrong items are pushed down the
   most; when the target is missed, every candidate gets 0 (the group carries no signal).
3. Group-normalized advantages A = (r − mean) / std within each history's G candidates (GRPO,
   Shao et al. 2024), and the clipped surrogate plus β·KL(π ‖ π_ref) of `trainers.ppo` — with the
   exact KL over the catalog: beam candidates are not samples of π, so the sampled k3 estimator
   of GRPO would be biased here. β = 1e-3 as in ReRe.

Targets: the logged next items whose observed reward is above ``min_target_reward`` (ReRe trains
on positive interactions; the default 0 keeps every event of a 1-5 star log, so raise it to train
only on liked items). Dropout is off during GRPO so π_old and π agree before the first update.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from trainers.data import (
    TensorData,
    batch_context,
    check_data,
    context_keys,
    is_sequence_data,
    sequences_to_events,
)
from trainers.loop import EvalFn, TrainConfig, TrainResult, describe, train_loop
from trainers.model import SequentialRecommender, reference_policy
from trainers.ppo import (
    MASKED_SCORE,
    clipped_policy_loss,
    masked_log_policy,
    rollout_minibatches,
)
from trainers.protocols import RewardFn, Scorer
from trainers.semantic_ids import PrefixTrie, constrained_beam_search, policy_step_log_probs


@dataclass
class GRPOConfig(TrainConfig):
    """ReRe-style GRPO. `batch_size` is the number of logged events per rollout; one loop step is
    one rollout batch, i.e. grpo_epochs × minibatches optimizer updates."""

    # the reward is the logged target itself; π_ref anchors the KL term
    uses_reference: ClassVar[bool] = True

    lr: float = field(default=3e-4, metadata=describe(
        "AdamW step size; fine-tuning a pre-trained policy takes a smaller step than SFT's 1e-3 "
        "(as PPOConfig)"))
    group_size: int = field(default=8, metadata=describe(
        "G: distinct candidates per history from beam search; GRPO/ReRe use groups of 4-16"))
    kl_coef: float = field(default=1e-3, metadata=describe(
        "β: weight of the exact KL(π ‖ π_ref); 1e-3 as in ReRe"))
    clip_eps: float = field(default=0.2, metadata=describe(
        "ε of the clipped ratio (GRPO, Shao et al. 2024, after Schulman et al. 2017)"))
    grpo_epochs: int = field(default=1, metadata=describe(
        "passes over each rollout batch; 1 (TRL's GRPO default) is on-policy, ratio 1"))
    minibatches: int = field(default=1, metadata=describe(
        "minibatches per pass over a rollout batch"))
    min_target_reward: float = field(default=0.0, metadata=describe(
        "logged events whose observed reward is above this are the targets (ReRe trains on "
        "positive interactions); 0 keeps every event of a 1-5 star log"))
    exclude_history: bool = field(default=True, metadata=describe(
        "beam-search only items outside the user's history (what a recommender would show)"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.group_size < 2:
            problems.append(f"group_size must be >= 2 for a group baseline, got {self.group_size}")
        if not self.kl_coef >= 0:
            problems.append(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not self.clip_eps > 0:
            problems.append(f"clip_eps must be > 0, got {self.clip_eps}")
        if self.grpo_epochs < 1 or self.minibatches < 1:
            problems.append("grpo_epochs and minibatches must be >= 1")
        if math.isnan(self.min_target_reward):
            problems.append("min_target_reward must be a number")
        return problems


def rere_rewards(candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ReRe's reward of each candidate [B, G] (best first) for the targets [B]: 1 for the target,
    −(1/log2(i+2)) / Σ_{j<G} 1/log2(j+2) for a negative at rank i when the target is among the
    candidates, 0 for every candidate when it is not."""
    hit = candidates == targets[:, None]
    ranks = torch.arange(candidates.shape[1], device=candidates.device, dtype=torch.float32)
    discount = 1.0 / torch.log2(ranks + 2.0)
    penalty = (-discount / discount.sum()).expand_as(hit)
    found = hit.any(1, keepdim=True)
    return torch.where(hit, 1.0, torch.where(found, penalty, 0.0))


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r − group mean) / (group std + eps) per row [B, G]; a constant group gets 0."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


def beam_candidates(
    log_policy: torch.Tensor, group_size: int, trie: PrefixTrie | None = None
) -> torch.Tensor:
    """G distinct candidates per row, best first [B, G]: the top-G of π for plain ids, else beam
    search constrained to the trie's codes over the token model π implies."""
    if trie is None:
        return log_policy.topk(group_size, dim=1).indices
    step = policy_step_log_probs(trie, log_policy)
    items, _ = constrained_beam_search(step, trie, log_policy.shape[0], group_size,
                                       device=log_policy.device)
    return items


def grpo_loss(model: SequentialRecommender, batch: TensorData, config: GRPOConfig):
    """Clipped surrogate on the candidates plus β·KL(π ‖ π_ref); normalizer = B·G."""
    log_policy = masked_log_policy(model, batch_context(batch), config.exclude_history)
    total, normalizer, scalars = clipped_policy_loss(
        log_policy, batch["candidates"], batch["old_log_probs"], batch["advantages"],
        batch["reference_log_policy"], config.clip_eps, config.kl_coef,
    )
    return total, normalizer, {**scalars, "hit_rate": batch["hits"].mean()}


def train_grpo(
    model: SequentialRecommender,
    data: TensorData,
    config: GRPOConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    item_codes: torch.Tensor | PrefixTrie | None = None,
) -> TrainResult:
    """GRPO on the logged events of ``data`` (sequences are unrolled to events). The reward is
    ReRe's rule on the logged target, so no ``reward_fn`` is taken. ``reference`` (π_ref of the
    KL) defaults to a frozen copy of ``model`` as given, normally the SFT policy (a resumed run
    must pass it). ``item_codes`` (LongTensor[n_items, D], row i the code of item i + 1, or a
    built `PrefixTrie`) switches the candidates to constrained beam search over semantic ids."""
    if reward_fn is not None:
        raise ValueError("grpo's reward is ReRe's rule on the logged next item; it takes no "
                         "reward model")
    config = config or GRPOConfig()
    data = check_data(data)
    if is_sequence_data(data):
        data = sequences_to_events(data)
    if "targets" not in data:
        raise ValueError("grpo needs logged targets: sequence or event data")
    keep = data["target_rewards"] > config.min_target_reward
    if not bool(keep.any()):
        raise ValueError(f"no logged event has a reward above min_target_reward="
                         f"{config.min_target_reward}")
    data = {key: data[key][keep] for key in (*context_keys(data), "targets", "target_rewards")}
    trie = item_codes
    if trie is not None and not isinstance(trie, PrefixTrie):
        trie = PrefixTrie(trie)
    if trie is not None and trie.n_items != model.config.n_items:
        raise ValueError(f"item_codes has {trie.n_items} codes for {model.config.n_items} items")
    reference = reference_policy(model, reference, resume_from, config.device)

    @torch.no_grad()
    def rollout(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()
        context = batch_context(batch)
        old_log_policy = masked_log_policy(module, context, config.exclude_history)
        if bool(((old_log_policy > MASKED_SCORE / 2).sum(1) < config.group_size).any()):
            raise ValueError(f"some history leaves fewer than group_size={config.group_size} "
                             "unseen items; lower group_size")
        candidates = beam_candidates(old_log_policy, config.group_size, trie)
        rewards = rere_rewards(candidates, batch["targets"])
        rollout_batch = {
            **batch,
            "candidates": candidates,
            "old_log_probs": old_log_policy.gather(1, candidates),
            "advantages": group_advantages(rewards),
            "hits": (rewards == 1.0).any(1).float(),
            "reference_log_policy": masked_log_policy(reference, context, config.exclude_history),
        }
        if config.grpo_epochs == 1 and config.minibatches == 1:
            return [rollout_batch]  # one on-policy update: no reshuffle
        return rollout_minibatches(rollout_batch, config.grpo_epochs, config.minibatches,
                                   generator)

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()  # no dropout: see the module docstring
        return grpo_loss(module, batch, config)

    return train_loop(
        model, data, loss_fn, config, prepare=rollout, eval_fn=eval_fn, resume_from=resume_from
    )
