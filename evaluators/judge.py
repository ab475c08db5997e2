"""The ensemble judge: a policy's value as scored by a reward-model ensemble.

Two ways to score a policy (a `ScorerLike`: context -> scores over the full catalog):

- slate: its top-k items (history and the padding item excluded), rewards discounted by
  position, gamma**i for the item at position i = 0..k-1;
- rollout: a greedy rollout of `horizon` steps; each step recommends the best-scored item not yet
  in the history and appends it to the history (with the ensemble's mean predicted reward as its
  reward), so later steps condition on earlier recommendations; step h is discounted gamma**h.

A user's value is the discounted mean sum_i gamma**i r_i / sum_i gamma**i, on the reward's own
scale. It is computed for every ensemble member; the judge reports the member-averaged mean over
users with its interval over users (`evaluators.intervals.mean_interval`), each member's value,
and the members' relative spread (sample standard deviation over members / |their mean|; Netflix
reported under 4% for theirs). On simulated data a `true_reward` function scores the same items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evaluators.intervals import Figure, mean_interval
from evaluators.protocols import ContextLike, EnsembleLike, RewardFnLike, ScorerLike

__all__ = ["EnsembleJudge", "JudgeResult"]


@dataclass(frozen=True)
class _Context:
    """Stand-in batch for contexts that are not dataclasses (same three attributes)."""

    users: torch.Tensor
    history_items: torch.Tensor
    history_rewards: torch.Tensor


@dataclass(frozen=True)
class JudgeResult:
    """What `EnsembleJudge.evaluate` returns.

    value: member-averaged policy value, interval over users. members: each member's value [M].
    relative_spread: std(members, ddof=1) / |mean(members)| (0 for one member).
    per_user: member-averaged value of each scored user. users: their row indices in the input.
    true_value: the same under `true_reward`, when one was given.
    """

    value: Figure
    members: np.ndarray
    relative_spread: float
    per_user: np.ndarray
    users: np.ndarray
    true_value: Figure | None = None
    true_per_user: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value.as_dict(),
            "members": [float(v) for v in self.members],
            "relative_spread": float(self.relative_spread),
            "n_users": int(self.users.shape[0]),
        }
        if self.true_value is not None:
            out["true_value"] = self.true_value.as_dict()
        return out


_CORE_FIELDS = ("users", "history_items", "history_rewards")


def _extra_fields(context: ContextLike) -> dict[str, torch.Tensor]:
    """Per-user tensor fields of a dataclass context beyond the three (e.g. the trainers'
    ``history_timestamps`` [B, L]): they travel with their rows wherever the judge moves them."""
    if not dataclasses.is_dataclass(context) or isinstance(context, type):
        return {}
    values = {f.name: getattr(context, f.name) for f in dataclasses.fields(context)
              if f.name not in _CORE_FIELDS}
    return {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}


def _concat(batches: Iterable[ContextLike]) -> ContextLike:
    """One context from several batches; shorter histories are left-padded with item 0 (and
    per-position extra fields with 0)."""
    batches = list(batches)
    if not batches:
        raise ValueError("no context batches to judge")
    width = max(int(b.history_items.shape[1]) for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (width - x.shape[1], 0))

    extras = [_extra_fields(b) for b in batches]
    if any(e.keys() != extras[0].keys() for e in extras):
        raise ValueError("context batches disagree on their fields")
    joined = {name: torch.cat([pad(e[name]) if e[name].dim() == 2 else e[name] for e in extras])
              for name in extras[0]}
    return _replace(
        batches[0],
        torch.cat([b.users for b in batches]),
        torch.cat([pad(b.history_items) for b in batches]),
        torch.cat([pad(b.history_rewards) for b in batches]),
        **joined,
    )


def _rows(context: ContextLike, rows: slice | torch.Tensor) -> ContextLike:
    extras = {name: value[rows] for name, value in _extra_fields(context).items()}
    return _replace(context, context.users[rows], context.history_items[rows],
                    context.history_rewards[rows], **extras)


def _replace(context: ContextLike, users: torch.Tensor, items: torch.Tensor,
             rewards: torch.Tensor, **extras: torch.Tensor) -> ContextLike:
    """A context of the caller's own type when it is a dataclass, else a `_Context`."""
    if dataclasses.is_dataclass(context) and not isinstance(context, type):
        return dataclasses.replace(context, users=users, history_items=items,
                                   history_rewards=rewards, **extras)
    return _Context(users, items, rewards)


class EnsembleJudge:
    """Scores policies with a reward ensemble (DESIGN.md, Evaluation).

    Args:
        ensemble: an `EnsembleLike`: (context, items[B, K]) -> [B, K] and .members -> [M, B, K].
        mode: "slate" (top-k) or "rollout" (greedy, `horizon` steps).
        k: slate size. horizon: rollout length. gamma: position / step discount in (0, 1].
        exclude_history: never recommend an item already in the user's history.
        padding_column: the catalog column that is not an item (0 in rmdiag), never recommended.
        batch_size: users per policy / ensemble call, at most.
        max_block_mib: the most memory one call's scores may take (the policy's [users,
            n_items] float32 output and its masked copy), in MiB. The first call scores one user
            to learn the catalog's width; later calls take as many users as fit, so a 10^6-item
            catalog is judged 67 users at a time at the default (4 GB a call at batch_size 1024
            without the bound), and a small catalog exactly as before (batch_size governs).
        method, confidence, n_resamples, seed: passed to `mean_interval`.
    """

    def __init__(
        self,
        ensemble: EnsembleLike,
        mode: str = "slate",
        k: int = 10,
        horizon: int = 3,
        gamma: float = 0.9,
        exclude_history: bool = True,
        padding_column: int | None = 0,
        batch_size: int = 1024,
        max_block_mib: float = 512.0,
        method: str = "bca",
        confidence: float = 0.95,
        n_resamples: int = 10_000,
        seed: int = 0,
    ) -> None:
        if mode not in ("slate", "rollout"):
            raise ValueError(f"mode must be 'slate' or 'rollout', got {mode!r}")
        if k < 1 or horizon < 1 or batch_size < 1:
            raise ValueError("k, horizon and batch_size must be >= 1")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not max_block_mib > 0:
            raise ValueError(f"max_block_mib must be > 0, got {max_block_mib}")
        if not hasattr(ensemble, "members"):
            raise TypeError("ensemble must expose .members(context, items) -> [M, B, K]")
        self.ensemble = ensemble
        self.mode = mode
        self.k = k
        self.horizon = horizon
        self.gamma = gamma
        self.exclude_history = exclude_history
        self.padding_column = padding_column
        self.batch_size = batch_size
        self.max_block_mib = max_block_mib
        self.method = method
        self.confidence = confidence
        self.n_resamples = n_resamples
        self.seed = seed

    def _masked_scores(self, policy: ScorerLike, context: ContextLike) -> torch.Tensor:
        scores = policy(context).detach().float().clone()
        if scores.dim() != 2 or scores.shape[0] != context.users.shape[0]:
            raise ValueError(f"policy returned scores of shape {tuple(scores.shape)}; expected "
                             f"[{context.users.shape[0]}, n_items]")
        if torch.isnan(scores).any():
            raise ValueError("policy returned NaN scores")
        if self.exclude_history:
            hist = context.history_items.to(scores.device).long()
            scores.scatter_(1, hist.clamp(0, scores.shape[1] - 1), float("-inf"))
        if self.padding_column is not None:
            scores[:, self.padding_column] = float("-inf")
        return scores

    def users_per_call(self, n_columns: int) -> int:
        """Users per policy call for a catalog of ``n_columns`` score columns: ``batch_size``
        or fewer, so that the scores and their masked copy (8 bytes a cell) fit
        ``max_block_mib``; at least one."""
        fits = int(self.max_block_mib * 2**20 // (8 * max(n_columns, 1)))
        return max(1, min(self.batch_size, fits))

    def _weights(self, n: int) -> torch.Tensor:
        w = self.gamma ** torch.arange(n, dtype=torch.float64)
        return w / w.sum()

    def _slate(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's top-k items and their position weights [B, k]. A user with fewer than k
        items left (history and padding excluded) gets the shorter slate: the excluded items
        topk would fill it with get weight 0 (and are replaced by the row's first item, so that
        a reward model never sees the padding id), the rest are renormalized."""
        k = min(self.k, scores.shape[1])
        top = torch.topk(scores, k, dim=1)
        valid = torch.isfinite(top.values)
        if not valid[:, 0].all():
            row = int(torch.nonzero(~valid[:, 0])[0, 0])
            raise ValueError(f"context row {row} has no item left to recommend: its history "
                             "covers the whole catalog")
        items = torch.where(valid, top.indices, top.indices[:, :1])
        weights = self._weights(k).to(scores.device)[None, :] * valid
        return items, weights / weights.sum(dim=1, keepdim=True)

    def _batch(self, policy: ScorerLike, context: ContextLike, true_reward: RewardFnLike | None
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Per-member values [M, B] (and true values [B]) of one batch, and the catalog's width
        (score columns)."""
        if self.mode == "slate":
            scores = self._masked_scores(policy, context)
            width = int(scores.shape[1])
            items, slate_weights = self._slate(scores)
            del scores  # the [B, n_items] block is not needed past the slate
            member_rewards = self.ensemble.members(context, items).double()  # [M, B, k]
            true = None if true_reward is None else true_reward(context, items).double()
        else:
            member_steps, true_steps = [], []
            ctx = context
            for _ in range(self.horizon):
                scores = self._masked_scores(policy, ctx)
                width = int(scores.shape[1])
                item = scores.argmax(dim=1, keepdim=True)  # [B, 1]
                del scores
                r = self.ensemble.members(ctx, item).double()  # [M, B, 1]
                member_steps.append(r)
                if true_reward is not None:
                    true_steps.append(true_reward(ctx, item).double())
                hist_items = torch.cat([ctx.history_items[:, 1:], item.to(
                    ctx.history_items.device, ctx.history_items.dtype)], dim=1)
                hist_rewards = torch.cat([ctx.history_rewards[:, 1:], r.mean(0).to(
                    ctx.history_rewards.device, ctx.history_rewards.dtype)], dim=1)
                # per-position extras (e.g. event times) shift too; the recommended item takes
                # the latest event's value (consumed now, with no time passing)
                shifted = {name: torch.cat([value[:, 1:], value[:, -1:]], dim=1)
                           for name, value in _extra_fields(ctx).items()
                           if value.shape == ctx.history_items.shape}
                ctx = _replace(ctx, ctx.users, hist_items, hist_rewards, **shifted)
            member_rewards = torch.cat(member_steps, dim=2)
            true = torch.cat(true_steps, dim=1) if true_reward is not None else None
        if member_rewards.dim() != 3 or member_rewards.shape[1] != context.users.shape[0]:
            raise ValueError(f"ensemble.members returned shape {tuple(member_rewards.shape)}; "
                             "expected [M, B, K]")
        if self.mode == "slate":
            w = slate_weights.to(member_rewards.device)  # [B, k], per user
        else:
            w = self._weights(member_rewards.shape[2]).to(member_rewards.device)[None, :]
        values = (member_rewards * w[None]).sum(dim=2)
        true_values = None if true is None else (true * w.to(true.device)).sum(dim=1)
        return values.cpu(), None if true_values is None else true_values.cpu(), width

    def evaluate(
        self,
        policy: ScorerLike,
        context: ContextLike | Iterable[ContextLike],
        target_rewards: Any = None,
        min_target_reward: float | str | None = None,
        true_reward: RewardFnLike | None = None,
    ) -> JudgeResult:
        """Judge `policy` on the users of `context` (one batch, or an iterable of batches whose
        users are taken in order; the judge re-batches by `batch_size`).

        target_rewards [U] with min_target_reward (a number, or "median" for the population
        median) keeps only users whose held-out target reward is at least that high, as Netflix
        scored only high-reward trajectories.
        """
        if not isinstance(context, ContextLike):
            context = _concat(context)
        n_users = int(context.users.shape[0])
        keep = np.arange(n_users)
        if min_target_reward is not None:
            if target_rewards is None:
                raise ValueError("min_target_reward needs target_rewards")
            tr = np.asarray(torch.as_tensor(target_rewards).cpu(), dtype=np.float64).reshape(-1)
            if tr.shape[0] != n_users:
                raise ValueError(f"target_rewards has {tr.shape[0]} values for {n_users} users")
            threshold = float(np.median(tr)) if min_target_reward == "median" else float(
                min_target_reward)
            keep = np.flatnonzero(tr >= threshold)
            if keep.size < 2:
                raise ValueError(f"only {keep.size} users have target reward >= {threshold}")
            context = _rows(context, torch.as_tensor(keep))
        member_values, true_values = [], []
        with torch.no_grad():
            lo, rows = 0, 1  # one user first: its scores give the catalog's width
            while lo < keep.size:
                batch = _rows(context, slice(lo, lo + rows))
                v, t, width = self._batch(policy, batch, true_reward)
                member_values.append(v)
                if t is not None:
                    true_values.append(t)
                lo += rows
                rows = self.users_per_call(width)
        per_member_user = torch.cat(member_values, dim=1).numpy()  # [M, U]
        per_user = per_member_user.mean(axis=0)
        members = per_member_user.mean(axis=1)
        spread = float(np.std(members, ddof=1) / abs(members.mean())) if members.size > 1 else 0.0
        figure = mean_interval(per_user, self.method, self.confidence, self.n_resamples, self.seed)
        true_fig, true_pu = None, None
        if true_values:
            true_pu = torch.cat(true_values).numpy()
            true_fig = mean_interval(true_pu, self.method, self.confidence, self.n_resamples,
                                     self.seed)
        return JudgeResult(figure, members, spread, per_user, keep, true_fig, true_pu)
