"""DPO and IPO with Netflix's interval-based rejection sampling (DESIGN.md, Algorithms).

Each loop step is one rollout batch of histories: sample K distinct candidates per history from
the current policy (history excluded), score them with a reward ensemble, and form one
(chosen, rejected) pair per history: the candidate with the highest lower bound against the one
with the lowest upper bound, bound = ensemble mean ± z·spread (population std over members,
`trainers.ensemble`). The pair is kept only when the intervals separate — lower bound of the
chosen above the upper bound of the rejected — so the policy is only taught preferences the
ensemble agrees on. Then one optimizer step on the kept pairs with the standard loss against the
frozen reference π_ref, on h = log π(y_w|s)/π_ref(y_w|s) − log π(y_l|s)/π_ref(y_l|s):

- DPO (Rafailov et al. 2023): −log σ(β·h);
- IPO (Azar et al. 2023): (h − 1/(2β))², which stops at the margin 1/(2β) instead of pushing h
  to infinity on preferences that are deterministic in the data.

The policy's full softmax over the catalog is available, so the exact KL(π ‖ π_ref) is logged
beside the loss (it is not part of either objective). Dropout is off during the updates, as
π_ref is evaluated without it (TRL's DPO disables dropout too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import (
    TensorData,
    batch_context,
    rollout_histories,
)
from trainers.ensemble import require_members, reward_interval
from trainers.loop import EvalFn, TrainConfig, TrainResult, describe, train_loop
from trainers.model import SequentialRecommender, reference_policy
from trainers.ppo import MASKED_SCORE, exact_kl, masked_log_policy
from trainers.protocols import RewardFn, Scorer

PairLoss = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class DPOConfig(TrainConfig):
    """DPO on pairs chosen by interval-based rejection sampling. `batch_size` is the number of
    histories per rollout; one loop step is one rollout and one optimizer update."""

    reward_model: ClassVar[str] = "required"
    uses_reference: ClassVar[bool] = True

    lr: float = field(default=3e-4, metadata=describe(
        "AdamW step size; fine-tuning a pre-trained policy takes a smaller step than SFT's 1e-3 "
        "(as PPOConfig)"))
    beta: float = field(default=0.1, metadata=describe(
        "β of the DPO loss −log σ(β·h): the strength of the implicit KL to π_ref; 0.1 as in "
        "Rafailov et al. 2023 (and TRL's default)"))
    n_candidates: int = field(default=8, metadata=describe(
        "K: distinct items sampled per history from the current policy, without replacement; "
        "the pair is the best and worst of them by the ensemble's bounds"))
    interval_z: float = field(default=1.0, metadata=describe(
        "z: bounds are ensemble mean ± z·std over members (population std, as the audit's "
        "spread); a pair is kept when the chosen's lower bound exceeds the rejected's upper "
        "bound. 1 (non-overlapping one-std error bars) is our default, not a figure from the "
        "Netflix paper; 0 keeps every pair whose means differ (and then also takes a reward "
        "function without members)"))
    exclude_history: bool = field(default=True, metadata=describe(
        "sample candidates only outside the user's history (what a recommender would show)"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.beta > 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        if self.n_candidates < 2:
            problems.append(f"n_candidates must be >= 2 to form a pair, got {self.n_candidates}")
        if not self.interval_z >= 0:
            problems.append(f"interval_z must be >= 0, got {self.interval_z}")
        return problems


@dataclass
class IPOConfig(DPOConfig):
    """IPO on pairs chosen by interval-based rejection sampling (see DPOConfig)."""

    beta: float = field(default=0.1, metadata=describe(
        "β (τ in Azar et al. 2023) of the IPO loss (h − 1/(2β))²: the log-ratio margin the "
        "policy is pulled to is 1/(2β), so larger β keeps it closer to π_ref; 0.1 as TRL's IPO "
        "default (the paper sweeps τ)"))


def dpo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO per pair: −log σ(β·h), h = chosen log-ratio − rejected log-ratio to π_ref."""
    return -F.logsigmoid(beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO per pair: (h − 1/(2β))², minimized at the margin h = 1/(2β)."""
    return (h - 1.0 / (2.0 * beta)) ** 2


def sample_distinct(log_policy: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """K distinct items per row drawn without replacement from π (Gumbel top-k) [B, K]."""
    uniform = torch.rand(log_policy.shape, generator=generator, device=log_policy.device)
    gumbel = -(-uniform.clamp(1e-20, 1.0).log()).log()
    return (log_policy + gumbel).topk(k, dim=1).indices


def select_pairs(
    candidates: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen [B], rejected [B], keep [B]): per row the candidate of highest lower bound, the
    one of lowest upper bound, and whether their intervals separate (low_chosen > high_rejected,
    which also means they are different items)."""
    best, worst = low.argmax(1, keepdim=True), high.argmin(1, keepdim=True)
    keep = (low.gather(1, best) > high.gather(1, worst)).squeeze(1)
    return candidates.gather(1, best).squeeze(1), candidates.gather(1, worst).squeeze(1), keep


def preference_loss(
    model: SequentialRecommender, batch: TensorData, config: DPOConfig, pair_loss: PairLoss
):
    """The pair loss summed over kept pairs; normalizer = kept pairs (all ranks' in DDP)."""
    log_policy = masked_log_policy(model, batch_context(batch), config.exclude_history)
    reference = batch["reference_log_policy"]
    pairs = torch.stack([batch["chosen"], batch["rejected"]], dim=1)
    log_ratio = log_policy.gather(1, pairs) - reference.gather(1, pairs)
    h = log_ratio[:, 0] - log_ratio[:, 1]
    keep = batch["keep"]
    # Rows without a pair stay in the sum with weight 0, so every rank's loss reaches every
    # parameter (DDP needs all ranks to take part in each gradient).
    total = (keep * pair_loss(h, config.beta)).sum()
    kept = keep.sum()
    scalars = {
        "kl": exact_kl(log_policy, reference).mean().detach(),
        "pair_rate": keep.mean(),
        "margin": ((keep * h).sum() / kept.clamp(min=1)).detach(),
    }
    return total, kept, scalars


def _train_preference(
    name: str,
    model: SequentialRecommender,
    data: TensorData,
    config: DPOConfig,
    pair_loss: PairLoss,
    reward_fn: RewardFn | None,
    reference: Scorer | None,
    eval_fn: EvalFn | None,
    resume_from: str | os.PathLike[str] | None,
) -> TrainResult:
    if reward_fn is None:
        raise ValueError(f"{name} needs a reward_fn (a reward ensemble) to choose its pairs")
    if config.interval_z > 0:
        require_members(reward_fn, f"{name} with interval_z {config.interval_z} > 0")
    data = rollout_histories(data)
    reference = reference_policy(model, reference, resume_from, config.device)

    @torch.no_grad()
    def rollout(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()
        context = batch_context(batch)
        log_policy = masked_log_policy(module, context, config.exclude_history)
        unseen = (log_policy > MASKED_SCORE / 2).sum(1)
        if bool((unseen < config.n_candidates).any()):
            raise ValueError(
                f"some history leaves fewer than n_candidates={config.n_candidates} items to "
                "sample; lower n_candidates"
            )
        candidates = sample_distinct(log_policy, config.n_candidates, generator)
        _, low, high = reward_interval(reward_fn, context, candidates, config.interval_z)
        chosen, rejected, keep = select_pairs(candidates, low, high)
        reference_log_policy = masked_log_policy(reference, context, config.exclude_history)
        return [{**batch, "chosen": chosen, "rejected": rejected, "keep": keep.float(),
                 "reference_log_policy": reference_log_policy}]

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator):
        assert isinstance(module, SequentialRecommender)
        module.eval()  # no dropout: π and π_ref are compared on the same deterministic forward
        return preference_loss(module, batch, config, pair_loss)

    return train_loop(
        model, data, loss_fn, config, prepare=rollout, eval_fn=eval_fn, resume_from=resume_from
    )


def train_dpo(
    model: SequentialRecommender,
    data: TensorData,
    config: DPOConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """DPO from the histories in ``data`` (contexts, events, or sequences unrolled to events),
    pairs from ``reward_fn`` (an ensemble with ``.members`` when interval_z > 0). ``reference``
    (π_ref) defaults to a frozen copy of ``model`` as given, normally the SFT policy (a
    resumed run must pass it)."""
    config = config or DPOConfig()
    return _train_preference("dpo", model, data, config, dpo_loss, reward_fn, reference,
                             eval_fn, resume_from)


def train_ipo(
    model: SequentialRecommender,
    data: TensorData,
    config: IPOConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """IPO, otherwise as `train_dpo`."""
    config = config or IPOConfig()
    return _train_preference("ipo", model, data, config, ipo_loss, reward_fn, reference,
                             eval_fn, resume_from)
