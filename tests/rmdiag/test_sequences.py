from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag.data import DataError, Interactions, load
from rmdiag.sequences import (
    event_sequence_blocks,
    event_sequences,
    user_sequences,
    user_sequences_from_parquet,
)
from rmdiag.split import leave_last_out
from tests.rmdiag.strategies import logs


def _events_by_user(log: Interactions) -> dict[int, list[tuple[int, int, int, float]]]:
    """Reference: each user's events as (timestamp, row, item, reward), by a Python sort."""
    out: dict[int, list] = {}
    for u, t, r, i, w in zip(
        log.users.tolist(),
        log.timestamps.tolist(),
        log.column("row").tolist(),
        log.items.tolist(),
        log.rewards.tolist(),
        strict=True,
    ):
        out.setdefault(u, []).append((t, r, i, w))
    return {u: sorted(v) for u, v in out.items()}


def _padded(events: list, max_len: int) -> tuple[list[int], list[float]]:
    tail = events[-max_len:] if events else []
    pad = max_len - len(tail)
    return [0] * pad + [e[2] for e in tail], [0.0] * pad + [e[3] for e in tail]


def _padded_times(events: list, max_len: int) -> list[int]:
    tail = events[-max_len:] if events else []
    return [0] * (max_len - len(tail)) + [e[0] for e in tail]


@settings(max_examples=150, deadline=None)
@given(logs(), st.integers(1, 6))
def test_user_sequences_match_a_python_reference(log: Interactions, max_len: int) -> None:
    seqs = user_sequences(log, max_len, timestamps=True)
    by_user = _events_by_user(log)
    assert seqs.items.shape == (log.n_users + 1, max_len)
    assert not seqs.items[0].any()
    assert seqs.timestamps is not None and user_sequences(log, max_len).timestamps is None
    for u in range(1, log.n_users + 1):
        items, rewards = _padded(by_user.get(u, []), max_len)
        assert seqs.items[u].tolist() == items
        np.testing.assert_allclose(seqs.rewards[u], rewards)
        assert seqs.timestamps[u].tolist() == _padded_times(by_user.get(u, []), max_len)


@settings(max_examples=150, deadline=None)
@given(logs(), st.integers(1, 6))
def test_event_histories_hold_exactly_the_earlier_events(log: Interactions, max_len: int) -> None:
    split = leave_last_out(log)
    history = split.train.concat(split.valid)
    seqs = event_sequences(history, split.test, max_len, timestamps=True)
    assert seqs.history_timestamps is not None
    by_user = _events_by_user(history)
    assert len(seqs) == len(split.test)
    for k, (u, t, r) in enumerate(
        zip(
            split.test.users.tolist(),
            split.test.timestamps.tolist(),
            split.test.column("row").tolist(),
            strict=True,
        )
    ):
        earlier = [e for e in by_user.get(u, []) if (e[0], e[1]) < (t, r)]
        items, rewards = _padded(earlier, max_len)
        assert seqs.history_items[k].tolist() == items
        np.testing.assert_allclose(seqs.history_rewards[k], rewards)
        assert seqs.history_timestamps[k].tolist() == _padded_times(earlier, max_len)
    # histories of events inside the same log exclude the event itself and everything after it
    own = event_sequences(log, log, max_len)
    for k in range(len(log)):
        assert (own.history_items[k] > 0).sum() <= min(max_len, k)
    ctx = seqs.context()
    assert ctx.history_items.shape == (len(split.test), max_len)
    assert ctx.history_timestamps is not None
    assert ctx.history_timestamps.tolist() == seqs.history_timestamps.tolist()


@settings(max_examples=100, deadline=None)
@given(logs(), st.integers(1, 6), st.integers(1, 7))
def test_event_sequence_blocks_tile_event_sequences(
    log: Interactions, max_len: int, block_rows: int
) -> None:
    # the blocked path (big logs) is the one-block path cut into consecutive rows
    whole = event_sequences(log, log, max_len)
    blocks = list(event_sequence_blocks(log, log, max_len, block_rows))
    assert [len(b) for b in blocks[:-1]] == [block_rows] * (len(blocks) - 1)
    for name in ("users", "history_items", "history_rewards", "targets", "target_rewards"):
        joined = np.concatenate([getattr(b, name) for b in blocks])
        np.testing.assert_array_equal(joined, getattr(whole, name))
        assert joined.dtype == getattr(whole, name).dtype


def test_streaming_parquet_equals_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 5_000
    import pyarrow as pa

    table = pa.table(
        {
            "uid": rng.integers(1, 300, n),
            "item_id": rng.integers(1, 90, n),
            "timestamp": rng.integers(0, 50, n),  # many ties: row order must break them
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, row_group_size=700)
    columns = {"user_id": "uid"}
    streamed = user_sequences_from_parquet(
        path,
        max_len=7,
        columns=columns,
        batch_rows=600,
        buffer_events=60,  # 8 users a block
    )
    log = load(path, columns)
    expected = user_sequences(log, 7)
    np.testing.assert_array_equal(streamed.sequences.items, expected.items)
    np.testing.assert_array_equal(streamed.sequences.rewards, expected.rewards)
    np.testing.assert_array_equal(streamed.user_ids, log.user_ids)
    np.testing.assert_array_equal(streamed.item_ids, log.item_ids)
    assert streamed.n_events == n


def test_streaming_reports_the_global_row_of_bad_input(tmp_path: Path) -> None:
    import pyarrow as pa

    rewards = [1.0] * 1000
    rewards[777] = float("nan")
    table = pa.table(
        {
            "user_id": [1] * 1000,
            "item_id": [2] * 1000,
            "timestamp": list(range(1000)),
            "reward": rewards,
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=100)
    with pytest.raises(DataError, match=r"bad\.parquet.*'reward'.*row 778"):
        user_sequences_from_parquet(path, max_len=5, batch_rows=100)
