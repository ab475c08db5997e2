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

Every figure is a ratio of sums over events -- an event-level mean -- and its interval resamples
users (the unit), all of the user's events together, so it stays right when users hold unequal
numbers of events: each resample's figure is recomputed from the drawn users' sums (a ratio
estimator), by a count matrix ``[resamples, users]`` times per-user sums, never a loop over
events. Percentile intervals, like the audit's other figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmdiag.audit.figures import Figure, finite_figure
from rmdiag.audit.metrics import Slice
from rmdiag.audit.statistics import user_resamples

N_BINS = 10
CLIP = 1e-6
_CHUNK = 250  # resamples per block in the AUC, which needs a [resamples, events] weight matrix


def is_binary(rewards: np.ndarray) -> bool:
    """Every reward is 0 or 1 (both present): the binary metrics apply."""
    values = np.unique(rewards)
    return len(values) == 2 and bool(np.all(values == np.array([0.0, 1.0])))


def resample_counts(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each user is drawn in each resample: float64 [n_resamples, n_users]."""
    draws = user_resamples(n_users, n_resamples, seed)
    flat = (draws + np.arange(n_resamples)[:, None] * n_users).ravel()
    return np.bincount(flat, minlength=n_resamples * n_users).reshape(n_resamples, n_users)


def _percentile(value: float, estimates: np.ndarray, confidence: float) -> Figure:
    estimates = estimates[np.isfinite(estimates)]
    if len(estimates) < 10 or not np.isfinite(value):
        return Figure.unavailable("too few non-degenerate resamples for an interval")
    tail = (1 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return finite_figure(value, low, high)


def ratio_figure(
    numerator: np.ndarray, denominator: np.ndarray, counts: np.ndarray, confidence: float
) -> Figure:
    """sum(numerator) / sum(denominator) over users, the interval from resampled users' sums."""
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(numerator.sum() / denominator.sum())
        return _percentile(value, (counts @ numerator) / (counts @ denominator), confidence)


def _user_sums(user_index: np.ndarray, values: np.ndarray, n_users: int) -> np.ndarray:
    return np.bincount(user_index, weights=values, minlength=n_users)


def quantile_bins(pred: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Each event's bin among (up to) ``n_bins`` quantile bins of ``pred`` (equal predictions
    share a bin, so fewer bins when there are few distinct values)."""
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, pred, side="right")


def _auc(
    pred: np.ndarray, labels: np.ndarray, user_index: np.ndarray, counts: np.ndarray,
    confidence: float,
) -> Figure:
    """AUC (ties half) with users resampled: weighted by how often each event's user is drawn."""
    if labels.min() == labels.max():
        return Figure.unavailable("one class only in this slice: AUC is undefined")
    order = np.argsort(pred, kind="stable")
    sorted_pred, sorted_labels, sorted_users = pred[order], labels[order], user_index[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_pred)) + 1]  # groups of tied predictions

    def auc(weights: np.ndarray) -> np.ndarray:  # weights [R, N] in sorted order
        positive = np.add.reduceat(weights * sorted_labels, starts, axis=1)
        negative = np.add.reduceat(weights * (1 - sorted_labels), starts, axis=1)
        below = np.cumsum(negative, axis=1) - negative
        with np.errstate(invalid="ignore", divide="ignore"):
            return (positive * (below + 0.5 * negative)).sum(1) / (
                positive.sum(1) * negative.sum(1)
            )

    value = float(auc(np.ones((1, len(pred))))[0])
    estimates = np.concatenate(
        [auc(block[:, sorted_users]) for block in np.split(counts, range(_CHUNK, len(counts),
                                                                          _CHUNK))]
    )
    return _percentile(value, estimates, confidence)


def calibration(
    pred: np.ndarray,
    rewards: np.ndarray,
    piece: Slice,
    *,
    binary: bool,
    counts: np.ndarray,
    confidence: float,
    min_users: int,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """The calibration figures (module docstring) of one model on one slice; ``counts`` is
    ``resample_counts(piece.n_users, ...)``, shared by every model for paired resamples."""
    if piece.n_users < min_users:
        reason = f"{piece.n_users} users in the '{piece.name}' slice; at least {min_users} needed"
        out: dict[str, Any] = {"mean_error": Figure.unavailable(reason),
                               "ece": Figure.unavailable(reason), "reliability": []}
        if binary:
            out.update({key: Figure.unavailable(reason) for key in ("log_loss", "brier", "auc")})
        return out
    p, y, users, n = pred[piece.rows], rewards[piece.rows], piece.user_index, piece.n_users
    events = _user_sums(users, np.ones(len(p)), n)
    out = {"mean_error": ratio_figure(_user_sums(users, p - y, n), events, counts, confidence)}

    bins = quantile_bins(p, n_bins)
    n_used = int(bins.max()) + 1
    cell = users * n_used + bins  # (user, bin) sums: [users, bins]
    shape = (n, n_used)

    def cell_sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=values, minlength=n * n_used).reshape(shape)

    predicted, observed, in_bin = cell_sums(p), cell_sums(y), cell_sums(np.ones(len(p)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = float(np.abs(predicted.sum(0) - observed.sum(0)).sum() / len(p))
        resampled = np.abs(counts @ predicted - counts @ observed).sum(1) / (counts @ events)
    out["ece"] = _percentile(ece, resampled, confidence)
    out["reliability"] = [
        {
            "bin": b,
            "events": int(in_bin[:, b].sum()),
            "predicted": ratio_figure(predicted[:, b], in_bin[:, b], counts, confidence),
            "observed": ratio_figure(observed[:, b], in_bin[:, b], counts, confidence),
        }
        for b in range(n_used)
    ]
    if binary:
        clipped = np.clip(p, CLIP, 1 - CLIP)
        log_loss = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
        out["log_loss"] = ratio_figure(_user_sums(users, log_loss, n), events, counts, confidence)
        out["brier"] = ratio_figure(_user_sums(users, (p - y) ** 2, n), events, counts,
                                    confidence)
        out["auc"] = _auc(p, y, users, counts, confidence)
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
) -> dict[str, Figure]:
    """Held-out minus training mean reward (the exposure shift), users of both resampled jointly
    (a user absent from one part adds nothing to that part's sums)."""
    union = np.union1d(train_users, heldout_users)
    counts = resample_counts(len(union), n_resamples, seed)
    parts = {}
    for name, users, rewards in (("train", train_users, train_rewards),
                                 ("heldout", heldout_users, heldout_rewards)):
        index = np.searchsorted(union, users)
        parts[name] = (_user_sums(index, rewards, len(union)),
                       _user_sums(index, np.ones(len(users)), len(union)))
    means = {name: ratio_figure(*sums, counts, confidence) for name, sums in parts.items()}
    (train_sum, train_n), (held_sum, held_n) = parts["train"], parts["heldout"]
    value = float(held_sum.sum() / held_n.sum() - train_sum.sum() / train_n.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        estimates = (counts @ held_sum) / (counts @ held_n) - (counts @ train_sum) / (
            counts @ train_n
        )
    return {
        "train_mean": means["train"],
        "heldout_mean": means["heldout"],
        "heldout_minus_train": _percentile(value, estimates, confidence),
    }
