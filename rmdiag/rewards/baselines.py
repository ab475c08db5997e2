"""The trivial reward predictors the audit compares every reward model against.

Netflix found a reward model trained on millions of users barely beat "the user's mean reward"
and "the item's mean reward" (DESIGN.md, background); these are those baselines, plus the global
mean and the additive user + item bias model. User and item means are shrunk toward the global
mean, ``(sum + k * mean) / (count + k)``; the strength ``k`` (and the bias model's
regularization) is chosen on the validation events when they are given.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch

from rmdiag.data import Interactions
from rmdiag.rewards.base import RewardModel, columns, event_weights
from trainers.protocols import Context

# Candidate strengths: from "no shrinkage" to "mostly the global mean" for users/items with
# tens of events (MovieLens users have 20+ ratings, items a long tail of 1-5).
SHRINKAGE_GRID: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# L2 strengths of the bias model (per user/item, in units of events), as in Koren (2009)-style
# baseline predictors where 10-25 is typical for MovieLens.
BIAS_REG_GRID: tuple[float, ...] = (1.0, 3.0, 10.0, 25.0, 50.0)


def _lookup(table: torch.Tensor, ids: torch.Tensor, default: float) -> torch.Tensor:
    """table[ids] with ``default`` for ids the model never saw (beyond the fitted range)."""
    inside = ids < table.shape[0]
    safe = torch.where(inside, ids, torch.zeros_like(ids))
    return torch.where(inside, table[safe], torch.full_like(table[safe], default))


def _mse(pred: np.ndarray, reward: np.ndarray) -> float:
    return float(np.mean((pred - reward) ** 2))


class GlobalMean(RewardModel):
    """Predicts the (weighted) mean training reward for everything."""

    kind = "global_mean"

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        self._refuse_empty(train)
        _, _, reward = columns(train)
        self.mean_ = float(np.average(reward, weights=event_weights(train, user_weight)))
        self.fitted_ = True
        return self

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return torch.full(items.shape, self.mean_, dtype=torch.float32)


class _ShrunkMean(RewardModel):
    """Mean reward per key (user or item), shrunk toward the global mean with strength k."""

    key: str = "user"

    def __init__(self, shrinkage: float | None = None) -> None:
        self.shrinkage = shrinkage

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        if self.shrinkage is not None and self.shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {self.shrinkage}")
        self._refuse_empty(train)
        users, items, reward = columns(train)
        weight = event_weights(train, user_weight)
        keys = users if self.key == "user" else items
        size = (train.n_users if self.key == "user" else train.n_items) + 1
        self.global_mean_ = float(np.average(reward, weights=weight))
        sums = np.bincount(keys, weights=weight * reward, minlength=size)
        counts = np.bincount(keys, weights=weight, minlength=size)
        if self.shrinkage is not None:
            strength = float(self.shrinkage)
        elif valid is not None and len(valid.table) > 0:
            v_users, v_items, v_reward = columns(valid)
            v_keys = v_users if self.key == "user" else v_items
            v_keys = np.where(v_keys < size, v_keys, 0)  # unseen keys fall back to the mean
            errors = [_mse(self._means(sums, counts, k)[v_keys], v_reward) for k in SHRINKAGE_GRID]
            strength = SHRINKAGE_GRID[int(np.argmin(errors))]
        else:
            strength = 5.0  # a few pseudo-events: a common default when nothing can tune it
        self.shrinkage_ = strength
        self.means_ = torch.as_tensor(self._means(sums, counts, strength), dtype=torch.float32)
        self.fitted_ = True
        return self

    def _means(self, sums: np.ndarray, counts: np.ndarray, strength: float) -> np.ndarray:
        denominator = counts + strength
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (sums + strength * self.global_mean_) / denominator
        return np.where(denominator > 0, means, self.global_mean_)

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        if self.key == "user":
            per_user = _lookup(self.means_, context.users.long(), self.global_mean_)
            return per_user[:, None].expand(items.shape).clone()
        return _lookup(self.means_, items.long(), self.global_mean_)


class UserMean(_ShrunkMean):
    """The user's mean training reward, shrunk toward the global mean (same for every item)."""

    kind = "user_mean"
    key = "user"


class ItemMean(_ShrunkMean):
    """The item's mean training reward, shrunk toward the global mean (same for every user)."""

    kind = "item_mean"
    key = "item"


class BiasModel(RewardModel):
    """Additive baseline ``mean + b_user + b_item`` with L2 penalties, fitted by alternating
    closed-form (ridge) updates; the penalty pair is chosen on ``valid`` when given.
    """

    kind = "bias"

    def __init__(
        self, user_reg: float | None = None, item_reg: float | None = None, n_iter: int = 15
    ) -> None:
        self.user_reg = user_reg
        self.item_reg = item_reg
        self.n_iter = n_iter

    def _solve(
        self,
        users: np.ndarray,
        items: np.ndarray,
        residual: np.ndarray,
        weight: np.ndarray,
        sizes: tuple[int, int],
        regs: tuple[float, float],
    ) -> tuple[np.ndarray, np.ndarray]:
        user_bias = np.zeros(sizes[0])
        item_bias = np.zeros(sizes[1])
        user_count = np.bincount(users, weights=weight, minlength=sizes[0])
        item_count = np.bincount(items, weights=weight, minlength=sizes[1])
        for _ in range(self.n_iter):
            item_sum = np.bincount(
                items, weights=weight * (residual - user_bias[users]), minlength=sizes[1]
            )
            item_bias = item_sum / (item_count + regs[1])
            user_sum = np.bincount(
                users, weights=weight * (residual - item_bias[items]), minlength=sizes[0]
            )
            user_bias = user_sum / (user_count + regs[0])
        return user_bias, item_bias

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        self._refuse_empty(train)
        users, items, reward = columns(train)
        weight = event_weights(train, user_weight)
        sizes = (train.n_users + 1, train.n_items + 1)
        self.global_mean_ = float(np.average(reward, weights=weight))
        residual = reward - self.global_mean_
        user_grid = BIAS_REG_GRID if self.user_reg is None else (float(self.user_reg),)
        item_grid = BIAS_REG_GRID if self.item_reg is None else (float(self.item_reg),)
        candidates = [(u, i) for u in user_grid for i in item_grid]
        if len(candidates) > 1 and valid is not None and len(valid.table) > 0:
            v_users, v_items, v_reward = columns(valid)
            v_users = np.where(v_users < sizes[0], v_users, 0)
            v_items = np.where(v_items < sizes[1], v_items, 0)
            errors = []
            for regs in candidates:
                ub, ib = self._solve(users, items, residual, weight, sizes, regs)
                errors.append(_mse(self.global_mean_ + ub[v_users] + ib[v_items], v_reward))
            regs = candidates[int(np.argmin(errors))]
        else:
            regs = (user_grid[len(user_grid) // 2], item_grid[len(item_grid) // 2])
        self.user_reg_, self.item_reg_ = regs
        user_bias, item_bias = self._solve(users, items, residual, weight, sizes, regs)
        self.user_bias_ = torch.as_tensor(user_bias, dtype=torch.float32)
        self.item_bias_ = torch.as_tensor(item_bias, dtype=torch.float32)
        self.fitted_ = True
        return self

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        user_part = _lookup(self.user_bias_, context.users.long(), 0.0)[:, None]
        return self.global_mean_ + user_part + _lookup(self.item_bias_, items.long(), 0.0)
