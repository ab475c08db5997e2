"""Discrete CQL in the one-step setting (Kumar et al. 2020; DESIGN.md, Algorithms).

A recommendation is a one-step decision: the Bellman target of the logged item is its observed
reward (no bootstrapping, γ = 0), so Q(s, a) regresses on r. CQL adds α·(logsumexp_a' Q(s, a') −
Q(s, a)) — the CQL(H) regularizer — which pushes Q down on every item in proportion to
softmax(Q) and back up on the logged one, so items the log never shows cannot look good by
extrapolation. Per logged event:

    (Q(s, a) − r)² + α·(logsumexp over the catalog of Q(s, ·) − Q(s, a))

The Q head is the policy model's output layer: Q(s, ·) = τ · logits, so the model's own softmax
is the CQL policy softmax(Q/τ) and it serves, ranks and plugs into every KL like any other
policy. The regularizer is the cross-entropy of softmax(Q) on the logged item (SFT's loss when
τ = 1), which is why CQL stays close to behaviour cloning as α grows. Trained on every position
of sequence data at once (or on event data), like SFT; a precomputed ``weights`` tensor
multiplies each event's loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from trainers.data import TensorData, check_data, target_states
from trainers.loop import EvalFn, TrainConfig, TrainResult, describe, train_loop
from trainers.model import SequentialRecommender
from trainers.protocols import RewardFn, Scorer


@dataclass
class CQLConfig(TrainConfig):
    """One-step discrete CQL on observed rewards; the policy is softmax(Q/τ)."""

    alpha: float = field(default=1.0, metadata=describe(
        "α, weight of the conservative term logsumexp Q − Q(logged); 1.0 is CQL(H) at unit "
        "weight (d3rlpy's DiscreteCQL default; Kumar et al. 2020 tune α per dataset); α → ∞ "
        "is behaviour cloning, α = 0 plain reward regression"))
    temperature: float = field(default=1.0, metadata=describe(
        "τ: the policy is softmax(Q/τ), i.e. Q = τ·logits; 1 is the softmax whose entropy-"
        "regularized CQL(H) objective gives the logsumexp term"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.alpha >= 0:
            problems.append(f"alpha must be >= 0, got {self.alpha}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        return problems


def cql_loss(
    q: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Per event: (Q(s,a) − r)² + α·(logsumexp Q(s,·) − Q(s,a)); q [T, n], actions [T] columns."""
    q_logged = q.gather(1, actions[:, None]).squeeze(1)
    return (q_logged - rewards) ** 2 + alpha * (torch.logsumexp(q, dim=1) - q_logged)


def item_q_values(model: SequentialRecommender, hidden: torch.Tensor, temperature: float):
    """Q(s, ·) over items 1..n_items [T, n_items] from hidden states [T, H]: τ·logits."""
    return temperature * (hidden @ model.item_embedding.weight[1:].T)


def train_cql(
    model: SequentialRecommender,
    data: TensorData,
    config: CQLConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """CQL on the logged events of sequence or event data (observed rewards only: no reward
    model, no reference policy)."""
    if reward_fn is not None or reference is not None:
        raise ValueError("cql learns from observed rewards only; it takes no reward model "
                         "or reference policy")
    config = config or CQLConfig()
    data = check_data(data)
    if "items" not in data and "targets" not in data:
        raise ValueError("cql needs logged targets and rewards: sequence or event data")

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        states = target_states(module, batch)
        q = item_q_values(module, states.hidden, config.temperature)
        per_event = cql_loss(q, states.targets - 1, states.reward, config.alpha)
        q_logged = q.gather(1, (states.targets - 1)[:, None]).squeeze(1)
        scalars = {
            "squared_error": ((q_logged - states.reward) ** 2).mean().detach(),
            "conservative_gap": (torch.logsumexp(q, 1) - q_logged).mean().detach(),
        }
        if states.weight is None:
            return per_event.sum(), per_event.new_tensor(float(per_event.numel())), scalars
        return (states.weight * per_event).sum(), states.weight.sum(), scalars

    return train_loop(model, data, loss_fn, config, eval_fn=eval_fn, resume_from=resume_from)
