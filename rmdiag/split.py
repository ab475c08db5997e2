"""Held-out splits of an encoded log, and the explored / unexplored label of held-out events."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmdiag.data import Interactions

DEFAULT_MIN_COUNT = 5
"""An item (or a user's catalog region) seen fewer than this many times in training is
*unexplored*. Five follows the usual "cold item" cut in recommender evaluation (e.g. the 5-core
filtering of MovieLens/Amazon benchmarks): below it, per-item statistics are mostly noise."""


@dataclass(frozen=True, eq=False)
class Split:
    """Three disjoint logs of one encoding whose union is the input."""

    train: Interactions
    valid: Interactions
    test: Interactions


def position_from_end(log: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """For each event: how many of its user's events follow it, and its user's event count."""
    users = log.users
    counts = np.bincount(users, minlength=log.n_users + 1)
    # the table is sorted by user, so a user's events are one contiguous run
    ends = np.cumsum(counts)
    return ends[users] - 1 - np.arange(len(users)), counts[users]


def leave_last_out(log: Interactions, min_events: int = 3) -> Split:
    """valid = each user's second-last event, test = the last; users with fewer than
    `min_events` events keep all of them in train (nothing of theirs could be learned)."""
    from_end, counts = position_from_end(log)
    eligible = counts >= min_events
    test = eligible & (from_end == 0)
    valid = eligible & (from_end == 1)
    return Split(log.take(~(test | valid)), log.take(valid), log.take(test))


def last_events_out(log: Interactions, k: int = 2) -> tuple[Interactions, Interactions]:
    """(train, held-out): each user's last `k` events held out (leave-last-k-out), users with
    `k` events or fewer keep all of them in train. `k = 2` holds out exactly
    `leave_last_out`'s valid and test events."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    from_end, counts = position_from_end(log)
    heldout = (counts >= k + 1) & (from_end < k)
    return log.take(~heldout), log.take(heldout)


def temporal_split(log: Interactions, test_start: int, valid_start: int | None = None) -> Split:
    """A global cut in time: test = events at or after `test_start`; valid = events in
    [valid_start, test_start) (empty when `valid_start` is None); train = the rest, before both."""
    ts = log.timestamps
    test = ts >= test_start
    valid = (ts >= valid_start) & ~test if valid_start is not None else np.zeros_like(test)
    return Split(log.take(~(test | valid)), log.take(valid), log.take(test))


def time_quantile(log: Interactions, quantile: float) -> int:
    """The timestamp below which `quantile` of the events fall (for choosing a cut-off)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return int(np.quantile(log.timestamps, quantile, method="higher"))


def unexplored_mask(
    train: Interactions,
    heldout: Interactions,
    min_count: int = DEFAULT_MIN_COUNT,
    item_regions: np.ndarray | None = None,
) -> np.ndarray:
    """Per held-out event: True when it lies where training rarely looked.

    Without `item_regions`: its item was seen fewer than `min_count` times in training.
    With `item_regions` (an int array mapping encoded item id -> region, e.g. a genre or a
    cluster, index 0 unused): also when its user saw fewer than `min_count` training events in
    the item's region.
    """
    item_counts = np.bincount(train.items, minlength=train.n_items + 1)
    mask = item_counts[heldout.items] < min_count
    if item_regions is not None:
        regions = np.asarray(item_regions, dtype=np.int64)
        if regions.shape != (train.n_items + 1,):
            raise ValueError(f"item_regions must have shape ({train.n_items + 1},)")
        n_regions = int(regions.max()) + 1
        user_region = train.users * n_regions + regions[train.items]
        seen = np.bincount(user_region, minlength=(train.n_users + 1) * n_regions)
        mask |= seen[heldout.users * n_regions + regions[heldout.items]] < min_count
    return mask
