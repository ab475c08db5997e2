"""Per-user values of the audit's metrics on a slice of held-out events (see ``rmdiag.audit``),
and the rank correlation of ensemble spread with error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from rmdiag.audit.config import AuditConfig
from rmdiag.audit.figures import Figure, finite_figure
from rmdiag.audit.statistics import user_resamples


def within_user_pairs(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, of rows that share a user; ``users`` must be grouped."""
    n = len(users)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    partners = np.repeat(ends, ends - starts) - np.arange(n) - 1  # rows after i in its group
    first = np.repeat(np.arange(n), partners)
    offsets = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners)
    return first, first + 1 + offsets


@dataclass(frozen=True)
class Slice:
    """Held-out rows of one slice, with user indices and usable pairs precomputed."""

    name: str
    rows: np.ndarray  # indices into the held-out events
    user_index: np.ndarray  # per row: 0..n_users-1
    n_users: int
    pair_first: np.ndarray  # indices into rows
    pair_second: np.ndarray
    pair_sign: np.ndarray  # sign of the reward difference (nonzero)
    pair_user: np.ndarray  # user index of each pair
    n_pair_users: int

    @classmethod
    def build(cls, name: str, rows: np.ndarray, users: np.ndarray, rewards: np.ndarray) -> Slice:
        slice_users = users[rows]
        _, user_index = np.unique(slice_users, return_inverse=True)
        first, second = within_user_pairs(slice_users)
        sign = np.sign(rewards[rows][first] - rewards[rows][second])
        usable = sign != 0
        first, second, sign = first[usable], second[usable], sign[usable]
        pair_user = user_index[first]
        return cls(
            name,
            rows,
            user_index,
            int(user_index.max() + 1) if len(rows) else 0,
            first,
            second,
            sign,
            pair_user,
            len(np.unique(pair_user)),
        )


def per_user_metrics(
    pred: np.ndarray, rewards: np.ndarray, piece: Slice, config: AuditConfig
) -> dict[str, np.ndarray | str]:
    """Per-user values (see ``rmdiag.audit``) of each metric, or the reason it is unavailable."""
    out: dict[str, np.ndarray | str] = {}
    if piece.n_users < config.min_users:
        reason = (
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
        return {"mse": reason, "mae": reason, "pairwise_accuracy": reason}
    error = pred[piece.rows] - rewards[piece.rows]
    scale = piece.n_users / len(piece.rows)
    out["mse"] = np.bincount(piece.user_index, weights=error**2, minlength=piece.n_users) * scale
    out["mae"] = (
        np.bincount(piece.user_index, weights=np.abs(error), minlength=piece.n_users) * scale
    )
    n_pairs = len(piece.pair_sign)
    if n_pairs < config.min_pairs or piece.n_pair_users < config.min_users:
        out["pairwise_accuracy"] = (
            f"{n_pairs} within-user pairs with different rewards from {piece.n_pair_users} users "
            f"in the '{piece.name}' slice; at least {config.min_pairs} pairs and "
            f"{config.min_users} users needed"
        )
        return out
    slice_pred = pred[piece.rows]
    agreement = (
        np.sign(slice_pred[piece.pair_first] - slice_pred[piece.pair_second]) * piece.pair_sign
    )
    correct = np.where(agreement > 0, 1.0, np.where(agreement == 0, 0.5, 0.0))
    pair_users, compact = np.unique(piece.pair_user, return_inverse=True)
    per_user = np.bincount(compact, weights=correct, minlength=len(pair_users))
    out["pairwise_accuracy"] = per_user * len(pair_users) / n_pairs
    out["_pair_users"] = pair_users
    return out


def rmse_linearized(mse_values: np.ndarray) -> np.ndarray:
    """Per-user values whose mean is the RMSE and whose spread is the delta-method one."""
    mse = float(mse_values.mean())
    rmse = float(np.sqrt(mse))
    return rmse + (mse_values - mse) / (2.0 * max(rmse, 1e-12))


def spread_error_correlation(
    spread: np.ndarray, abs_error: np.ndarray, piece: Slice, config: AuditConfig
) -> Figure:
    """Spearman correlation of member spread with absolute error, interval over users."""
    if piece.n_users < config.min_users:
        return Figure.unavailable(
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
    x, y = spread[piece.rows], abs_error[piece.rows]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Figure.unavailable("spread or error is constant: the rank correlation is undefined")
    value = float(scipy.stats.spearmanr(x, y).statistic)
    # resample users: each draw takes all events of the drawn users
    order = np.argsort(piece.user_index, kind="stable")
    counts = np.bincount(piece.user_index, minlength=piece.n_users)
    starts = np.cumsum(counts) - counts
    draws = user_resamples(piece.n_users, min(config.n_resamples, 1000), config.seed)
    estimates = []
    for drawn in draws:
        lengths = counts[drawn]
        rows = order[
            np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
            + np.arange(lengths.sum())
        ]
        if np.ptp(x[rows]) > 0 and np.ptp(y[rows]) > 0:
            estimates.append(scipy.stats.spearmanr(x[rows], y[rows]).statistic)
    if len(estimates) < 10:
        return Figure.unavailable("too few non-degenerate resamples for an interval")
    tail = (1 - config.confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return finite_figure(value, low, high)
