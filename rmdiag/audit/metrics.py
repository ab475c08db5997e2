"""Per-user sums of the audit's metrics on a slice of held-out events (each metric a ratio of
sums over users, see ``rmdiag.audit``), and the rank correlation of ensemble spread with error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluators.intervals import spearman_interval
from rmdiag.audit.config import AuditConfig
from rmdiag.audit.figures import Figure, finite_figure


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


@dataclass(frozen=True)
class UserSums:
    """A metric as a ratio of per-user sums: ``sum(numerator) / sum(denominator)`` over users is
    its event-level (or pair-level) value, whatever each user's count; users with a zero
    denominator hold nothing to measure (``evaluators.intervals.ratio_interval``)."""

    numerator: np.ndarray
    denominator: np.ndarray

    @property
    def value(self) -> float:
        return float(self.numerator.sum() / self.denominator.sum())


def per_user_metrics(
    pred: np.ndarray, rewards: np.ndarray, piece: Slice, config: AuditConfig
) -> dict[str, UserSums | str]:
    """Per-user sums of each metric (index = the slice's user index), or the reason it is
    unavailable: ``mse`` and ``mae`` sum squared and absolute errors over the user's events in
    the slice, over their event count; ``pairwise_accuracy`` sums correct pairs (a tied
    prediction counts half) over the user's usable pairs."""
    out: dict[str, UserSums | str] = {}
    if piece.n_users < config.min_users:
        reason = (
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
        return {"mse": reason, "mae": reason, "pairwise_accuracy": reason}
    error = pred[piece.rows] - rewards[piece.rows]
    events = np.bincount(piece.user_index, minlength=piece.n_users).astype(np.float64)
    out["mse"] = UserSums(
        np.bincount(piece.user_index, weights=error**2, minlength=piece.n_users), events
    )
    out["mae"] = UserSums(
        np.bincount(piece.user_index, weights=np.abs(error), minlength=piece.n_users), events
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
    out["pairwise_accuracy"] = UserSums(
        np.bincount(piece.pair_user, weights=correct, minlength=piece.n_users),
        np.bincount(piece.pair_user, minlength=piece.n_users).astype(np.float64),
    )
    return out


def spread_error_correlation(
    spread: np.ndarray, abs_error: np.ndarray, piece: Slice, config: AuditConfig
) -> Figure:
    """Spearman correlation of member spread with absolute error, interval over users
    (``evaluators.intervals.spearman_interval``: each resample takes all events of the users
    drawn, at most 1000 resamples)."""
    if piece.n_users < config.min_users:
        return Figure.unavailable(
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
    x, y = spread[piece.rows], abs_error[piece.rows]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Figure.unavailable("spread or error is constant: the rank correlation is undefined")
    figure = spearman_interval(
        x,
        y,
        piece.user_index,
        confidence=config.confidence,
        n_resamples=min(config.n_resamples, 1000),
        seed=config.seed,
    )
    if not figure.available:
        return Figure.unavailable("too few non-degenerate resamples for an interval")
    return finite_figure(figure.value, figure.low, figure.high,
                         confidence=figure.confidence, method=figure.method)
