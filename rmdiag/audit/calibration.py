"""Calibration of each model's predictions, and the shift between the logged and held-out rewards.

Per model and slice (``calibration(...)``):

- ``mean_error``: mean of prediction - reward over the slice's events (calibration-in-the-large;
  > 0 means the model predicts too high);
- ``reliability``: the slice's predictions cut into (up to) ``n_bins`` quantile bins of that
  model's predictions; per bin the mean prediction against the mean observed reward;
- ``ece``: the event-weighted mean over those bins of |mean prediction - mean observed| (the
  expected calibration error of Guo et al. 2017 with quantile bins; for non-binary rewards the
  same quantity on the reward scale). Like any binned estimate it is biased upward when bins
  hold few events (noise alone makes the bin means differ);
- for binary rewards (every reward 0 or 1): ``log_loss`` (predictions clipped to [1e-6, 1 - 1e-6]),
  ``brier`` and ``auc`` (ties in the prediction count half).

``shift(...)``: the held-out events' mean reward minus the training events' (the exposure shift:
a randomized-exposure holdout typically rates lower than the items a recommender chose to show).

Every figure's interval resamples users (the unit), all of a user's events together, so it
stays right when users hold unequal numbers of events: the means (mean error, log-loss, Brier,
each bin's means, the shift's parts) are ratio estimators (``evaluators.intervals.
ratio_interval`` through ``rmdiag.audit.statistics``), ECE and AUC are recomputed on each
resample of users (``evaluators.intervals.grouped_bootstrap``), and the shift is a paired
difference of two ratios with one denominator each (train and held-out events). Percentile
intervals, like the audit's other figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats

from evaluators.intervals import grouped_bootstrap
from rmdiag.audit.figures import Figure
from rmdiag.audit.metrics import Slice
from rmdiag.audit.statistics import finite, paired_ratio_stats, ratio_figure

N_BINS = 10
CLIP = 1e-6
AUC_RESAMPLES = 1000  # each resample sorts the slice's events once (a Python call per resample)


def is_binary(rewards: np.ndarray) -> bool:
    """Every reward is 0 or 1 (both present): the binary metrics apply."""
    values = np.unique(rewards)
    return len(values) == 2 and bool(np.all(values == np.array([0.0, 1.0])))


def _user_sums(user_index: np.ndarray, values: np.ndarray, n_users: int) -> np.ndarray:
    return np.bincount(user_index, weights=values, minlength=n_users)


def quantile_bins(pred: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Each event's bin among (up to) ``n_bins`` quantile bins of ``pred`` (equal predictions
    share a bin, so fewer bins when there are few distinct values)."""
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, n_bins + 1)[1:-1]))
    # numbered 0.. over the bins that hold events (a quantile edge can leave one empty)
    return np.unique(np.searchsorted(edges, pred, side="right"), return_inverse=True)[1]


def _ece(gap: np.ndarray, events: np.ndarray, weights: np.ndarray) -> float:
    """ECE from per-user sums [users, bins] of predictions minus rewards and event counts, each
    user counted `weights[u]` times (`grouped_bootstrap(..., weighted=True)`)."""
    return float(np.abs(weights @ gap).sum() / (weights @ events))


def auc(pred: np.ndarray, labels: np.ndarray) -> float:
    """P(a positive's prediction > a negative's), ties half (Mann-Whitney U / (n1 n0) from
    average ranks); NaN with one class only."""
    n_positive = int(labels.sum())
    n_negative = len(labels) - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(pred)
    u = ranks[labels == 1].sum() - n_positive * (n_positive + 1) / 2
    return float(u / (n_positive * n_negative))


def calibration(
    pred: np.ndarray,
    rewards: np.ndarray,
    piece: Slice,
    *,
    binary: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
    min_users: int,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """The calibration figures (module docstring) of one model on one slice. The same seed for
    every model resamples the same users (the evaluators' resampler draws depend only on the
    seed and the number of users)."""
    if piece.n_users < min_users:
        reason = f"{piece.n_users} users in the '{piece.name}' slice; at least {min_users} needed"
        out: dict[str, Any] = {"mean_error": Figure.unavailable(reason),
                               "ece": Figure.unavailable(reason), "reliability": []}
        if binary:
            out.update({key: Figure.unavailable(reason) for key in ("log_loss", "brier", "auc")})
        return out
    stats = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    p, y, users, n = pred[piece.rows], rewards[piece.rows], piece.user_index, piece.n_users
    events = _user_sums(users, np.ones(len(p)), n)
    out = {"mean_error": ratio_figure(_user_sums(users, p - y, n), events, **stats)}

    bins = quantile_bins(p, n_bins)
    n_used = int(bins.max()) + 1
    cell = users * n_used + bins  # (user, bin) sums: [users, bins]

    def cell_sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=values, minlength=n * n_used).reshape(n, n_used)

    predicted, observed, in_bin = cell_sums(p), cell_sums(y), cell_sums(np.ones(len(p)))
    out["ece"] = finite(grouped_bootstrap(
        _ece, np.arange(n), predicted - observed, events, weighted=True, **stats))
    out["reliability"] = [
        {
            "bin": b,
            "events": int(in_bin[:, b].sum()),
            "predicted": ratio_figure(predicted[:, b], in_bin[:, b], **stats),
            "observed": ratio_figure(observed[:, b], in_bin[:, b], **stats),
        }
        for b in range(n_used)
    ]
    if binary:
        clipped = np.clip(p, CLIP, 1 - CLIP)
        log_loss = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
        out["log_loss"] = ratio_figure(_user_sums(users, log_loss, n), events, **stats)
        out["brier"] = ratio_figure(_user_sums(users, (p - y) ** 2, n), events, **stats)
        out["auc"] = (
            Figure.unavailable("one class only in this slice: AUC is undefined")
            if y.min() == y.max()
            else finite(grouped_bootstrap(
                auc, users, p, y, confidence=confidence,
                n_resamples=min(n_resamples, AUC_RESAMPLES), seed=seed))
        )
    return out


def shift(
    train_users: np.ndarray,
    train_rewards: np.ndarray,
    heldout_users: np.ndarray,
    heldout_rewards: np.ndarray,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Held-out minus training mean reward (the exposure shift), users of both resampled jointly
    (a user absent from one part adds nothing to that part's sums), with its p-value."""
    union = np.union1d(train_users, heldout_users)
    stats = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    parts = {}
    for name, users, rewards in (("train", train_users, train_rewards),
                                 ("heldout", heldout_users, heldout_rewards)):
        index = np.searchsorted(union, users)
        parts[name] = (_user_sums(index, rewards, len(union)),
                       _user_sums(index, np.ones(len(users)), len(union)))
    (train_sum, train_n), (held_sum, held_n) = parts["train"], parts["heldout"]
    difference, p_value, _ = paired_ratio_stats(held_sum, train_sum, held_n, train_n, **stats)
    return {
        "train_mean": ratio_figure(train_sum, train_n, **stats),
        "heldout_mean": ratio_figure(held_sum, held_n, **stats),
        "heldout_minus_train": difference,
        "p_value": p_value,
    }
