"""Left-truncated, left-padded histories (item 0 = padding), built with vectorized numpy.

Two shapes serve everything downstream:
- `user_sequences`: one row per user, their last `max_len` events (what a next-item model trains
  on at every position at once);
- `event_sequences`: one row per target event, with the history that preceded it (what a reward
  model and every held-out evaluation consumes).
`user_sequences_from_parquet` builds the first from a Parquet log larger than memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from rmdiag.data import DataError, Interactions, resolve_columns, validate

if TYPE_CHECKING:
    from trainers.protocols import Context


@dataclass(frozen=True, eq=False)
class UserSequences:
    """items[u] / rewards[u]: user u's last max_len events, left-padded; row 0 is empty.
    timestamps[u]: their times when asked for (what HSTU's time bias reads), else None."""

    items: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    timestamps: np.ndarray | None = None

    @property
    def max_len(self) -> int:
        return int(self.items.shape[1])


@dataclass(frozen=True, eq=False)
class Sequences:
    """One row per target event: the user, the history before it, the target and its reward
    (and the history's times when asked for, else None)."""

    users: np.ndarray
    history_items: np.ndarray
    history_rewards: np.ndarray
    targets: np.ndarray
    target_rewards: np.ndarray
    history_timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def context(self, rows: np.ndarray | slice | None = None) -> Context:
        """The histories as a torch `Context` (optionally only some rows)."""
        import torch  # not at module level: streaming sequence building needs no torch

        from trainers.protocols import Context

        pick = slice(None) if rows is None else rows
        times = self.history_timestamps
        return Context(
            users=torch.from_numpy(np.ascontiguousarray(self.users[pick])),
            history_items=torch.from_numpy(np.ascontiguousarray(self.history_items[pick])),
            history_rewards=torch.from_numpy(
                np.ascontiguousarray(self.history_rewards[pick], dtype=np.float32)
            ),
            history_timestamps=None if times is None else torch.from_numpy(
                np.ascontiguousarray(times[pick])),
        )


def _window_index(
    starts: np.ndarray, ends: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of rows [start:end] truncated to the last max_len, left-padded; and which are
    real (the rest are padding)."""
    offsets = np.arange(-max_len, 0, dtype=np.int64)
    index = ends[:, None] + offsets[None, :]
    valid = index >= starts[:, None]
    return np.where(valid, index, 0), valid


def _take_windows(values: np.ndarray, index: np.ndarray, valid: np.ndarray,
                  dtype: type) -> np.ndarray:
    return np.where(valid, values[index] if len(values) else 0, 0).astype(dtype)


def _gather_windows(
    items: np.ndarray, rewards: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of items[start:end] truncated to the last max_len and left-padded with 0."""
    index, valid = _window_index(starts, ends, max_len)
    return (_take_windows(items, index, valid, np.int64),
            _take_windows(rewards, index, valid, np.float32))


def _gather_timestamps(
    log: Interactions, starts: np.ndarray, ends: np.ndarray, max_len: int, wanted: bool
) -> np.ndarray | None:
    if not wanted:
        return None
    index, valid = _window_index(starts, ends, max_len)
    return _take_windows(log.timestamps, index, valid, np.int64)


def _user_bounds(users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(users, minlength=n_users + 1)
    ends = np.cumsum(counts)
    return ends - counts, ends


def user_sequences(log: Interactions, max_len: int, timestamps: bool = False) -> UserSequences:
    """Each user's last `max_len` events (row u for user u), left-padded with item 0; with
    `timestamps`, their times too."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    starts, ends = _user_bounds(log.users, log.n_users)
    items, rewards = _gather_windows(log.items, log.rewards, starts, ends, max_len)
    return UserSequences(items, rewards, np.minimum(ends - starts, max_len),
                         _gather_timestamps(log, starts, ends, max_len, timestamps))


def event_sequences(history: Interactions, events: Interactions, max_len: int,
                    timestamps: bool = False) -> Sequences:
    """For each event in `events`, the user's events in `history` strictly before it (with
    `timestamps`, their times too).

    "Before" is by (timestamp, row): both logs carry the source's row number, so events that
    share a timestamp keep the order the log had (DESIGN.md: a stable tie break).
    """
    (block,) = event_sequence_blocks(history, events, max_len, block_rows=max(len(events), 1),
                                     timestamps=timestamps)
    return block


def event_sequence_blocks(
    history: Interactions, events: Interactions, max_len: int, block_rows: int = 8192,
    timestamps: bool = False,
) -> Iterator[Sequences]:
    """`event_sequences` of `events` in consecutive blocks of `block_rows` events (the last may
    be shorter), so that a pass over a large log holds one block's [rows, max_len] windows and
    not the whole log's (10M events x 50: 6 GB of windows and as much again in temporaries)."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if history.n_users != events.n_users or history.user_ids is not events.user_ids:
        raise ValueError("history and events must share one encoding (use Interactions.take)")
    starts, _ = _user_bounds(history.users, history.n_users)
    # history is sorted by (user, timestamp, row), so a lexicographic search over the three keys
    # finds, per event, how many of the user's history events precede it.
    hist_key = _composite_key(history)
    event_key = _composite_key(events)
    ends = np.searchsorted(hist_key, event_key, side="left").astype(np.int64)
    del hist_key, event_key
    users, items, rewards = events.users, events.items, events.rewards
    ends = np.maximum(ends, starts[users])
    for first in range(0, max(len(events), 1), block_rows):
        rows = slice(first, first + block_rows)
        block_users = users[rows]
        hist_items, hist_rewards = _gather_windows(
            history.items, history.rewards, starts[block_users], ends[rows], max_len
        )
        yield Sequences(
            users=block_users.astype(np.int64),
            history_items=hist_items,
            history_rewards=hist_rewards,
            targets=items[rows].astype(np.int64),
            target_rewards=rewards[rows].astype(np.float32),
            history_timestamps=_gather_timestamps(history, starts[block_users], ends[rows],
                                                  max_len, timestamps),
        )


def _composite_key(log: Interactions) -> np.ndarray:
    """(user, timestamp, row) as one sortable structured array."""
    key = np.empty(len(log), dtype=[("user", "<i8"), ("timestamp", "<i8"), ("row", "<i8")])
    key["user"], key["timestamp"], key["row"] = log.users, log.timestamps, log.column("row")
    return key


# --------------------------------------------------------------------------------------------
# Streaming from Parquet


@dataclass(frozen=True, eq=False)
class StreamedSequences:
    """`user_sequences` of a Parquet log read in batches, with the id encoding it used."""

    sequences: UserSequences
    user_ids: np.ndarray
    item_ids: np.ndarray
    n_events: int


def user_sequences_from_parquet(
    path: str | os.PathLike[str],
    max_len: int,
    columns: dict[str, str] | None = None,
    batch_rows: int = 500_000,
    buffer_events: int = 2_000_000,
) -> StreamedSequences:
    """`user_sequences` for a Parquet log that need not fit in memory.

    Pass 1 reads the file in record batches, validates each and collects the distinct ids.
    Pass 2 goes through blocks of users, so that a block's per-user buffers hold at most
    `buffer_events` events (block users x max_len); for each block it re-reads the file, keeps
    that block's events and, after every batch, cuts each user back to their last `max_len`
    events. Memory is O(buffer_events + batch_rows + n_users * max_len for the result), whatever
    the file's size; the price is one read of the file per block. The result equals
    `user_sequences(load(path), max_len)`.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    name = str(path)
    dataset = _open_dataset(path)
    names = resolve_columns(dataset.schema.names, name, columns)
    read_columns = list(dict.fromkeys(names.values()))

    user_sets, item_sets = [], []
    n_events = 0
    for batch in _batches(dataset, name, batch_rows, read_columns):
        raw = _validated_batch(batch, name, columns, n_events)
        user_sets.append(pc.unique(raw.column("user_id")))
        item_sets.append(pc.unique(raw.column("item_id")))
        n_events += batch.num_rows
    if n_events == 0:
        raise DataError("the log has no rows", source=name)
    user_uniques = _sorted_unique(user_sets)
    item_uniques = _sorted_unique(item_sets)
    n_users = len(user_uniques)

    out_items = np.zeros((n_users + 1, max_len), dtype=np.int64)
    out_rewards = np.zeros((n_users + 1, max_len), dtype=np.float32)
    lengths = np.zeros(n_users + 1, dtype=np.int64)
    block_users = max(1, buffer_events // max_len)
    for first in range(1, n_users + 1, block_users):
        last = min(n_users, first + block_users - 1)  # encoded users first..last
        buffer = _EventBuffer()
        offset = 0
        for batch in _batches(dataset, name, batch_rows, read_columns):
            raw = _validated_batch(batch, name, columns, offset)
            users = pc.index_in(raw.column("user_id"), value_set=user_uniques).to_numpy() + 1
            keep = np.flatnonzero((users >= first) & (users <= last))
            if len(keep):
                items = pc.index_in(raw.column("item_id"), value_set=item_uniques).to_numpy()
                buffer.add(
                    users[keep].astype(np.int64),
                    _as_numpy(raw.column("timestamp"), np.int64)[keep],
                    keep + offset,
                    items[keep].astype(np.int64) + 1,
                    _as_numpy(raw.column("reward"), np.float64)[keep],
                    max_len,
                )
            offset += batch.num_rows
        block = slice(first, last + 1)
        starts, ends = _user_bounds(buffer.user, last)
        block_items, block_rewards = _gather_windows(
            buffer.item, buffer.reward, starts[block], ends[block], max_len
        )
        out_items[block], out_rewards[block] = block_items, block_rewards
        lengths[block] = np.minimum(ends[block] - starts[block], max_len)
    return StreamedSequences(
        UserSequences(out_items, out_rewards, lengths),
        _with_placeholder(user_uniques),
        _with_placeholder(item_uniques),
        n_events,
    )


class _EventBuffer:
    """Events of a block of users, kept sorted by (user, timestamp, row) and cut to max_len."""

    def __init__(self) -> None:
        self.user = np.empty(0, np.int64)
        self.timestamp = np.empty(0, np.int64)
        self.row = np.empty(0, np.int64)
        self.item = np.empty(0, np.int64)
        self.reward = np.empty(0, np.float64)

    def add(self, user, timestamp, row, item, reward, max_len: int) -> None:  # noqa: ANN001
        user = np.concatenate([self.user, user])
        timestamp = np.concatenate([self.timestamp, timestamp])
        row = np.concatenate([self.row, row])
        order = np.lexsort((row, timestamp, user))
        sorted_users = user[order]
        counts = np.bincount(sorted_users)
        from_end = np.cumsum(counts)[sorted_users] - 1 - np.arange(len(order))
        order = order[from_end < max_len]
        self.user, self.timestamp, self.row = user[order], timestamp[order], row[order]
        self.item = np.concatenate([self.item, item])[order]
        self.reward = np.concatenate([self.reward, reward])[order]


def _as_numpy(values: pa.ChunkedArray, dtype: type) -> np.ndarray:
    return values.cast(pa.from_numpy_dtype(np.dtype(dtype))).to_numpy()


def _with_placeholder(uniques: pa.Array) -> np.ndarray:
    """Raw ids with a padding placeholder at index 0, as `rmdiag.data` encodes them."""
    raw = uniques.to_numpy(zero_copy_only=False)
    placeholder = np.array([None if raw.dtype == object else 0], dtype=raw.dtype)
    return np.concatenate([placeholder, raw])


def _open_dataset(path: str | os.PathLike[str]) -> ds.Dataset:
    name = str(path)
    if not os.path.exists(name):
        raise DataError("file not found", source=name)
    try:
        return ds.dataset(name, format="parquet")
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"unreadable or corrupt Parquet file ({error})", source=name) from error


def _batches(dataset: ds.Dataset, name: str, batch_rows: int, columns: list[str]):
    try:
        yield from dataset.to_batches(columns=columns, batch_size=batch_rows)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"unreadable or corrupt Parquet file ({error})", source=name) from error


def _validated_batch(
    batch: pa.RecordBatch, name: str, columns: dict[str, str] | None, offset: int
) -> pa.Table:
    try:
        return validate(pa.Table.from_batches([batch]), name, columns)
    except DataError as error:
        if error.row is None:
            raise
        raise DataError(
            error.detail,
            source=name,
            column=error.column,
            row=error.row + offset,
        ) from None


def _sorted_unique(parts: list[pa.Array]) -> pa.Array:
    merged = pc.unique(pa.chunked_array(parts).combine_chunks())
    return merged.take(pc.sort_indices(merged))
