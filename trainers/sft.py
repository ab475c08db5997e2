"""Supervised next-item trainers: SFT, reward-weighted BC, exp-weighted SFT and A-SFT.

All four maximize a weighted log-likelihood of the logged next item, Σ w·log π(a|s); they differ
only in the weight (DESIGN.md, Algorithms). Each loss is one short function of the per-target
log-probabilities and rewards (`trainers.data.NextItemTargets`) returning the summed loss and its
normalizer; `trainers.loop.train_loop` does the rest. A precomputed ``weights`` tensor in the data
multiplies the algorithm's weight (e.g. a 0/1 filter or an importance weight).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from trainers.data import (
    NextItemTargets,
    TensorData,
    batch_context,
    check_data,
    is_sequence_data,
    item_log_proposal,
    next_item_targets,
    sequences_to_events,
)
from trainers.loop import EvalFn, TrainConfig, TrainResult, describe, drawn_rows, train_loop
from trainers.model import SequentialRecommender, reference_policy
from trainers.protocols import Context, RewardFn, Scorer

Loss = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SFTConfig(TrainConfig):
    """Behaviour cloning: minimize −log π(a|s) on every logged event."""

    n_negatives: int = field(default=0, metadata=describe(
        "sampled-softmax negatives per batch, shared by its rows (0 = full softmax over the "
        "catalog); full softmax is exact and cheap below ~100k items, sampled softmax with log-Q "
        "correction (Yi et al., RecSys 2019) is for larger catalogs"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.n_negatives < 0:
            problems.append(f"n_negatives must be >= 0, got {self.n_negatives}")
        return problems


@dataclass
class RewardWeightedConfig(SFTConfig):
    """Reward-weighted BC (Netflix's baseline): weight r − min_reward, self-normalized."""

    min_reward: float = field(default=0.0, metadata=describe(
        "rewards are shifted by this so weights are >= 0 (0 suits 1-5 star ratings); rewards "
        "below it get weight 0"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if not math.isfinite(self.min_reward):
            problems.append(f"min_reward must be finite, got {self.min_reward}")
        return problems


@dataclass
class ExpSFTConfig(SFTConfig):
    """Exp-weighted SFT (arXiv 2603.10279): weight exp(r/λ), self-normalized over the batch."""

    lam: float = field(default=1.0, metadata=describe(
        "λ, the temperature: small λ concentrates on the best logged events, λ → ∞ (inf) is SFT; "
        "the paper finds an inverted U in λ, 1.0 on a 1-5 scale is a moderate default to tune"))
    max_weight: float | None = field(default=None, metadata=describe(
        "optional cap on a self-normalized weight w / mean(w) (per rank's batch), for robustness"))

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.lam > 0:
            problems.append(f"lam must be > 0, got {self.lam}")
        if self.max_weight is not None and not self.max_weight > 0:
            problems.append(f"max_weight must be > 0 or None, got {self.max_weight}")
        return problems


@dataclass
class ASFTConfig(SFTConfig):
    """A-SFT (Netflix 2025): weight min(exp(A/β), w_max), A = r − b(s)."""

    beta: float = field(default=1.0, metadata=describe(
        "β controls how far the policy may move from the logging policy; β → ∞ (inf) is SFT"))
    max_weight: float = field(default=20.0, metadata=describe(
        "w_max caps the weight of rare high-advantage events (20 as in AWR, Peng et al. 2019)"))
    baseline_batch_size: int = field(default=256, metadata=describe(
        "users per chunk when computing b(s) = Σ_a π_ref(a|s) R̂(s, a)"))
    baseline_top_k: int | None = field(default=None, metadata=describe(
        "b(s) over π_ref's top k items only, renormalized (None = the whole catalog): a reward "
        "model costlier than a table lookup makes the whole catalog per event too slow; biased "
        "toward the top items' rewards"))
    baseline_samples: int = field(default=0, metadata=describe(
        "K > 0: b(s) as the mean of R̂(s, a) over K items drawn from π_ref(·|s) with "
        "replacement, unbiased for the whole-catalog sum with variance Var_π(R̂)/K "
        "(`sampled_reward_model_baseline` states it per state); 0 = exact or baseline_top_k. "
        "For catalogs of 10^5+ items, where R̂ on every item per event is too slow"))
    # b(s) from a reward model and π_ref when one is given, else the user's mean observed reward.
    reward_model: ClassVar[str] = "optional"
    uses_reference: ClassVar[bool] = True

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.beta > 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        if not self.max_weight > 0:
            problems.append(f"max_weight must be > 0, got {self.max_weight}")
        if self.baseline_top_k is not None and self.baseline_top_k < 1:
            problems.append(f"baseline_top_k must be >= 1 or None, got {self.baseline_top_k}")
        if self.baseline_batch_size < 1:
            problems.append(f"baseline_batch_size must be >= 1, got {self.baseline_batch_size}")
        if self.baseline_samples < 0 or self.baseline_samples == 1:
            problems.append("baseline_samples must be 0 (exact) or >= 2 (its variance needs two "
                            f"draws), got {self.baseline_samples}")
        if self.baseline_samples and self.baseline_top_k is not None:
            problems.append("baseline_samples and baseline_top_k are two ways to cut b(s)'s "
                            "cost; give one")
        return problems


def _sample_weight(targets: NextItemTargets) -> torch.Tensor | float:
    return 1.0 if targets.weight is None else targets.weight


def sft_loss(targets: NextItemTargets, config: SFTConfig) -> Loss:
    weight = _sample_weight(targets)
    if isinstance(weight, float):
        return -targets.log_prob.sum(), targets.log_prob.new_tensor(float(targets.log_prob.numel()))
    return -(weight * targets.log_prob).sum(), weight.sum()


def reward_weighted_loss(targets: NextItemTargets, config: RewardWeightedConfig) -> Loss:
    weight = (targets.reward - config.min_reward).clamp(min=0) * _sample_weight(targets)
    return -(weight * targets.log_prob).sum(), weight.sum()


def exp_sft_loss(targets: NextItemTargets, config: ExpSFTConfig) -> Loss:
    # float64: exp(r/λ) stays finite up to r/λ ≈ 709, enough for small λ on star ratings; the
    # scale cancels in the self-normalization Σ w·ℓ / Σ w.
    weight = torch.exp((targets.reward.double() / config.lam).clamp(max=700.0))
    if config.max_weight is not None:
        weight = (weight / weight.mean()).clamp(max=config.max_weight)
    weight = weight * _sample_weight(targets)
    return -(weight * targets.log_prob.double()).sum(), weight.sum()


def a_sft_loss(targets: NextItemTargets, config: ASFTConfig) -> Loss:
    if targets.advantage is not None:
        advantage = targets.advantage
        if torch.isnan(advantage).any():
            raise ValueError("A-SFT drew a row without a precomputed advantage: a_sft_advantages "
                             "was given other rows than this run draws (drawn_rows of its config)")
    else:  # no reward model: the user's mean observed reward is the baseline b(s)
        advantage = targets.reward - targets.history_mean
    weight = torch.exp(advantage / config.beta).clamp(max=config.max_weight)
    weight = weight * _sample_weight(targets)
    count = targets.log_prob.new_tensor(float(targets.log_prob.numel()))
    return -(weight * targets.log_prob).sum(), count


def _train_weighted(
    model: SequentialRecommender,
    data: TensorData,
    config: SFTConfig,
    loss: Callable[[NextItemTargets, SFTConfig], Loss],
    eval_fn: EvalFn | None,
    resume_from: str | os.PathLike[str] | None,
) -> TrainResult:
    data = check_data(data)
    log_q = None
    if config.n_negatives > 0:
        log_q = item_log_proposal(data, model.config.n_items).to(config.device)

    def loss_fn(module: nn.Module, batch: TensorData, generator: torch.Generator) -> Loss:
        assert isinstance(module, SequentialRecommender)
        return loss(next_item_targets(module, batch, config.n_negatives, log_q, generator), config)

    return train_loop(model, data, loss_fn, config, eval_fn=eval_fn, resume_from=resume_from)


def _refuse_reward_model(name: str, reward_fn: RewardFn | None, reference: Scorer | None) -> None:
    if reward_fn is not None or reference is not None:
        raise ValueError(f"{name} learns from observed rewards only; it takes no reward model")


def train_sft(
    model: SequentialRecommender,
    data: TensorData,
    config: SFTConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Behaviour cloning on sequence or event data (trainers.data)."""
    _refuse_reward_model("sft", reward_fn, reference)
    return _train_weighted(model, data, config or SFTConfig(), sft_loss, eval_fn, resume_from)


def train_reward_weighted(
    model: SequentialRecommender,
    data: TensorData,
    config: RewardWeightedConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Reward-weighted behaviour cloning on observed rewards."""
    _refuse_reward_model("rw-bc", reward_fn, reference)
    config = config or RewardWeightedConfig()
    return _train_weighted(model, data, config, reward_weighted_loss, eval_fn, resume_from)  # type: ignore[arg-type]


def train_exp_sft(
    model: SequentialRecommender,
    data: TensorData,
    config: ExpSFTConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Exp-weighted SFT on observed rewards: no reward model, no propensities."""
    _refuse_reward_model("exp-sft", reward_fn, reference)
    config = config or ExpSFTConfig()
    return _train_weighted(model, data, config, exp_sft_loss, eval_fn, resume_from)  # type: ignore[arg-type]


# cells of one float64 block of π_ref's probabilities (64 MiB: 8 rows at 10^6 items)
_FLOAT64_BLOCK_CELLS = 2**23


@dataclass
class SampledBaseline:
    """b(s) estimated from K draws a_1..a_K ~ π_ref(·|s): value = mean_k R̂(s, a_k) [N], unbiased
    for Σ_a π_ref(a|s) R̂(s, a); variance = its variance as estimated, sample variance of the
    R̂(s, a_k) (ddof 1) / K [N]; samples = K."""

    value: torch.Tensor
    variance: torch.Tensor
    samples: int


def _reference_logits(reference: Scorer, context: Context) -> torch.Tensor:
    """π_ref's logits [B, n_items + 1] in float32, the padding column never an action."""
    logits = reference(context).float()
    logits[:, 0] = float("-inf")
    return logits


@torch.no_grad()
def sampled_reward_model_baseline(
    reward_fn: RewardFn,
    reference: Scorer,
    data: TensorData,
    samples: int,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> SampledBaseline:
    """b(s) = Σ_a π_ref(a|s) R̂(s, a) estimated by K = ``samples`` draws per event row from
    π_ref(·|s) over items 1..n_items (the exact sum's support), with replacement.

    The reward model is called K times per event instead of n_items. Memory: one float32
    [batch_size, n_items + 1] block of logits (1 GiB for 256 users at 10^6 items: lower
    ``batch_size`` there) and float64 probabilities of a few of its rows at a time.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 (the variance needs two draws), got {samples}")
    values, variances = [], []
    n_rows = int(data["users"].shape[0])
    for start in range(0, n_rows, batch_size):
        rows = slice(start, start + batch_size)
        context = batch_context({key: value[rows] for key, value in data.items()})
        logits = _reference_logits(reference, context)
        # float64 probabilities, a few rows at a time: torch.multinomial accumulates the
        # cumulative sum in its input's precision, and in float32 over 10^6 items that biased a
        # 10^7-draw mean by about 2 standard errors (float64: none measurable beside it)
        rows_at_once = max(1, _FLOAT64_BLOCK_CELLS // logits.shape[1])
        items = torch.cat([
            torch.multinomial(torch.softmax(block.double(), dim=1), samples, replacement=True,
                              generator=generator)
            for block in logits.split(rows_at_once)])
        del logits
        rewards = reward_fn(context, items).double()
        values.append(rewards.mean(1))
        variances.append(rewards.var(1, correction=1) / samples)
    if not values:
        return SampledBaseline(torch.zeros(0), torch.zeros(0), samples)
    return SampledBaseline(torch.cat(values).float(), torch.cat(variances).float(), samples)


@torch.no_grad()
def reward_model_baseline(
    reward_fn: RewardFn,
    reference: Scorer,
    data: TensorData,
    batch_size: int = 256,
    top_k: int | None = None,
    samples: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """b(s) = Σ_a π_ref(a|s) R̂(s, a), one value per event row [N].

    Over the whole catalog, or with ``top_k`` over π_ref's top_k items renormalized (the
    policy's likely actions): the reward model is then called k times per event, not n_items.
    With ``samples`` = K > 0, the unbiased estimate from K draws of π_ref
    (`sampled_reward_model_baseline`, which also gives its variance).
    """
    if samples:
        return sampled_reward_model_baseline(reward_fn, reference, data, samples, batch_size,
                                             generator).value
    baselines = []
    n_rows = int(data["users"].shape[0])
    for start in range(0, n_rows, batch_size):
        rows = slice(start, start + batch_size)
        context = batch_context({key: value[rows] for key, value in data.items()})
        logits = _reference_logits(reference, context)
        if top_k is None or top_k >= logits.shape[1] - 1:
            probs = torch.softmax(logits, dim=1)[:, 1:]
            items = torch.arange(1, probs.shape[1] + 1).expand(len(context), -1)
        else:
            top = logits.topk(top_k, dim=1)
            probs, items = torch.softmax(top.values, dim=1), top.indices
        baselines.append((probs * reward_fn(context, items).float()).sum(1))
    return torch.cat(baselines) if baselines else torch.zeros(0)


# Sequence rows unrolled into events this many events at a time (about): [events, L] histories
# of a whole 10M-event log took the process past 24 GiB (int64 items, float32 rewards and as much
# again in temporaries) where b(s) needs only a batch at a time.
_EVENTS_PER_CHUNK = 1 << 18


def _event_chunks(data: TensorData, batch_size: int,
                  events_per_chunk: int | None = None) -> Iterator[TensorData]:
    """`sequences_to_events(data)` in order, a few rows at a time: chunks of a multiple of
    `batch_size` events (the last one: the rest), so that batching each chunk by `batch_size`
    cuts the same batches as batching the whole unrolled data -- the same values, and the same
    draws of a sampled baseline's generator."""
    events_per_chunk = events_per_chunk or _EVENTS_PER_CHUNK
    n_rows = int(data["items"].shape[0])
    targets_per_row = (data["items"][:, 1:] != 0).sum(1)
    pending: TensorData | None = None
    start = 0
    while start < n_rows:
        # rows up to about events_per_chunk targets (at least one row)
        stop = int(torch.searchsorted(targets_per_row[start:].cumsum(0),
                                      torch.tensor(events_per_chunk), right=True)) + start
        stop = min(max(stop, start + 1), n_rows)
        events = sequences_to_events({key: value[start:stop] for key, value in data.items()})
        if pending is not None:
            events = {key: torch.cat([pending[key], events[key]]) for key in events}
        whole = int(events["targets"].shape[0]) // batch_size * batch_size
        if whole:
            yield {key: value[:whole] for key, value in events.items()}
        pending = {key: value[whole:] for key, value in events.items()}
        start = stop
    if pending is not None and int(pending["targets"].shape[0]):
        yield pending


def a_sft_advantages(
    data: TensorData,
    reward_fn: RewardFn,
    reference: Scorer,
    top_k: int | None = None,
    batch_size: int = 256,
    samples: int = 0,
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> TensorData:
    """``data`` with A-SFT's advantages A = r − b(s) added (`reward_model_baseline`; with
    ``samples`` = K > 0 its unbiased K-draw estimate).

    b(s) is computed on each target's history as its own event, as it would be served.
    Precompute once to share between runs (e.g. a β sweep): A does not depend on β.
    With ``rows`` (e.g. `trainers.loop.drawn_rows` of the runs to come) only those rows get
    advantages, the others NaN, which `a_sft_loss` refuses: a short run on a large log needs b(s)
    on the rows it draws, not on every event.
    """
    data = check_data(data)
    chosen = data if rows is None else {key: value[rows] for key, value in data.items()}
    if is_sequence_data(data):
        events = _event_chunks(chosen, batch_size)
    else:
        events = iter([chosen])
    advantages = [
        chunk["target_rewards"] - reward_model_baseline(reward_fn, reference, chunk, batch_size,
                                                        top_k, samples, generator)
        for chunk in events
    ]
    advantage = torch.cat(advantages) if advantages else torch.zeros(0)
    if is_sequence_data(data):
        # Back onto the sequence grid, so training still runs every position at once.
        grid = torch.zeros_like(chosen["rewards"])
        grid[:, 1:][chosen["items"][:, 1:] != 0] = advantage
        advantage = grid
    if rows is not None:
        n_rows = int(next(iter(data.values())).shape[0])
        full = torch.full((n_rows, *advantage.shape[1:]), float("nan"), dtype=advantage.dtype)
        full[rows] = advantage
        advantage = full
    return {**data, "advantages": advantage}


def train_a_sft(
    model: SequentialRecommender,
    data: TensorData,
    config: ASFTConfig | None = None,
    *,
    reward_fn: RewardFn | None = None,
    reference: Scorer | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """A-SFT. With ``reward_fn``, b(s) comes from it and ``reference`` (default: a frozen copy of
    ``model`` as given, normally the SFT policy; a resumed run must pass it), on each target's
    history as an event.
    Without it, b(s) is the mean observed reward of the history (the user-mean fallback).
    Precomputed ``advantages`` in the data take precedence over both.
    """
    config = config or ASFTConfig()
    data = check_data(data)
    if reward_fn is not None and "advantages" not in data:
        reference = reference_policy(model, reference, resume_from, "cpu")
        # seeded from the run's seed: the sampled baseline is reproducible like the rest
        generator = torch.Generator().manual_seed(config.seed)
        # b(s) on the rows this run draws only (a short run on a large log draws a few)
        rows = drawn_rows(int(next(iter(data.values())).shape[0]), config)
        data = a_sft_advantages(data, reward_fn, reference, config.baseline_top_k,
                                config.baseline_batch_size, config.baseline_samples, generator,
                                rows)
    elif reference is not None and reward_fn is None:
        raise ValueError("a reference policy is only used with a reward_fn")
    return _train_weighted(model, data, config, a_sft_loss, eval_fn, resume_from)  # type: ignore[arg-type]
