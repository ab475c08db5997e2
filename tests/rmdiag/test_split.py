from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag.data import Interactions
from rmdiag.split import leave_last_out, temporal_split, unexplored_mask
from tests.rmdiag.strategies import logs


def _keys(log: Interactions) -> set[tuple[int, int, int]]:
    return set(
        zip(log.users.tolist(), log.timestamps.tolist(), log.column("row").tolist(), strict=True)
    )


def _assert_partition(log: Interactions, *parts: Interactions) -> None:
    rows = np.concatenate([p.column("row") for p in parts])
    assert sorted(rows.tolist()) == sorted(log.column("row").tolist())
    assert len(set(rows.tolist())) == len(rows)


def _assert_no_heldout_before_train(train: Interactions, heldout: Interactions) -> None:
    last_train = {}
    for user, ts, row in _keys(train):
        last_train[user] = max(last_train.get(user, (ts, row)), (ts, row))
    for user, ts, row in _keys(heldout):
        if user in last_train:
            assert (ts, row) > last_train[user]


@settings(max_examples=150, deadline=None)
@given(logs())
def test_leave_last_out_partitions_and_holds_out_the_last_events(log: Interactions) -> None:
    split = leave_last_out(log)
    _assert_partition(log, split.train, split.valid, split.test)
    _assert_no_heldout_before_train(split.train, split.valid)
    _assert_no_heldout_before_train(split.train, split.test)
    _assert_no_heldout_before_train(split.valid, split.test)
    counts = np.bincount(log.users, minlength=log.n_users + 1)
    eligible = set(np.flatnonzero(counts >= 3).tolist())
    assert sorted(split.test.users.tolist()) == sorted(eligible)
    assert sorted(split.valid.users.tolist()) == sorted(eligible)


@settings(max_examples=150, deadline=None)
@given(logs(), st.integers(0, 6), st.integers(0, 6))
def test_temporal_split_partitions_by_time(log: Interactions, a: int, b: int) -> None:
    valid_start, test_start = min(a, b), max(a, b)
    split = temporal_split(log, test_start=test_start, valid_start=valid_start)
    _assert_partition(log, split.train, split.valid, split.test)
    assert (split.train.timestamps < valid_start).all()
    assert ((split.valid.timestamps >= valid_start) & (split.valid.timestamps < test_start)).all()
    assert (split.test.timestamps >= test_start).all()
    _assert_no_heldout_before_train(split.train, split.test)


@settings(max_examples=100, deadline=None)
@given(logs(), st.integers(1, 4))
def test_unexplored_mask_counts_training_exposure(log: Interactions, min_count: int) -> None:
    split = leave_last_out(log)
    mask = unexplored_mask(split.train, split.test, min_count)
    train_items = split.train.items.tolist()
    expected = [train_items.count(item) < min_count for item in split.test.items.tolist()]
    assert mask.tolist() == expected
    regions = np.arange(log.n_items + 1) % 2
    region_mask = unexplored_mask(split.train, split.test, min_count, item_regions=regions)
    pairs = list(zip(split.train.users.tolist(), regions[split.train.items].tolist(), strict=True))
    for k, (user, item) in enumerate(
        zip(split.test.users.tolist(), split.test.items.tolist(), strict=True)
    ):
        user_region_seen = pairs.count((user, int(regions[item])))
        assert region_mask[k] == (expected[k] or user_region_seen < min_count)
