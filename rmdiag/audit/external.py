"""A reward model of the user's own: per-event predictions from a file, or a ``RewardFn``.

``read_predictions(path, heldout)`` matches a predictions file (``user_id``, ``item_id``,
``timestamp`` -- optional where each held-out (user, item) pair occurs once -- ``prediction``
and, for an ensemble, ``member``) to the held-out events, giving ``[M, N_heldout]``;
``reward_fn_events(fn, history, events)`` scores a ``RewardFn`` (or an ensemble exposing
``.members``) on each event's context from ``history``, as the built-in models are scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rmdiag.data import (
    DataError,
    Interactions,
    _read_file,
    _refuse_first,
    _to_arrow,
    _validate_id,
    _validate_timestamp,
    check_header,
    validate_number,
)
from rmdiag.rewards import BASELINES, REWARD_MODELS
from rmdiag.sequences import event_sequences
from trainers.protocols import Context

DEFAULT_NAME = "external"
# history length for a RewardFn that does not say (``history_len``) how much it reads
DEFAULT_HISTORY = 50
PREDICT_BATCH = 4096


def reserved_names() -> set[str]:
    """Names an external model may not take: the baselines, the built-in kinds, ``ensemble``."""
    return {*BASELINES, *REWARD_MODELS, "ensemble"}


def check_name(name: str) -> None:
    if not name or name in reserved_names():
        raise ValueError(
            f"external model name {name!r} clashes with a built-in name; choose another "
            f"(built-in: {sorted(reserved_names())})"
        )


def _raw(ids: np.ndarray, encoded: np.ndarray) -> list[str]:
    return [str(v) for v in ids[encoded]]


def read_predictions(
    source: str | os.PathLike[str] | pa.Table | Any, heldout: Interactions
) -> tuple[np.ndarray, dict[str, Any]]:
    """The predictions of every member for every held-out event, float64 ``[M, N]`` (rows of
    ``heldout`` in order), and ``{matched, ignored, members, source}``. Raises ``DataError``
    naming the file (and column, row or held-out event) for a missing column, a bad value, a
    duplicate prediction or a held-out event without one."""
    if isinstance(source, str | os.PathLike):
        name = str(source)
        table = _read_file(Path(source))
    else:
        name, table = "<predictions>", _to_arrow(source)
        check_header(table.column_names, name)
    present = table.column_names
    for column in ("user_id", "item_id", "prediction"):
        if column not in present:
            raise DataError(f"missing column; the file has {present}", source=name,
                            column=column)
    if table.num_rows == 0:
        raise DataError("the predictions file has no rows", source=name)
    users = _validate_id(table.column("user_id"), name, "user_id").to_pylist()
    items = _validate_id(table.column("item_id"), name, "item_id").to_pylist()
    timed = "timestamp" in present
    times = (_validate_timestamp(table.column("timestamp"), name, "timestamp").to_pylist()
             if timed else [None] * table.num_rows)
    predictions = validate_number(table.column("prediction"), name, "prediction", "prediction",
                                  booleans=False).to_numpy()
    if "member" in present:
        member_column = table.column("member")
        _refuse_first(pc.is_null(member_column), member_column, "missing member", name, "member")
        members = [str(m) for m in member_column.to_pylist()]
    else:
        members = [""] * table.num_rows

    # the held-out events, keyed in the user's ids
    h_users = _raw(heldout.user_ids, heldout.users)
    h_items = _raw(heldout.item_ids, heldout.items)
    h_times = [int(t) for t in heldout.timestamps]
    index: dict[tuple, int] = {}
    for row, key in enumerate(zip(h_users, h_items, h_times, strict=True)):
        index[key if timed else key[:2]] = row  # with timestamps the key is unique
    if not timed and len(index) < len(heldout):
        seen: set[tuple[str, str]] = set()
        for key in zip(h_users, h_items, strict=True):
            if key in seen:
                raise DataError(
                    f"no timestamp column, and the held-out events have user {key[0]!r}, item "
                    f"{key[1]!r} more than once: add a timestamp column", source=name,
                    column="timestamp")
            seen.add(key)

    labels = list(dict.fromkeys(members))
    label_index = {label: m for m, label in enumerate(labels)}
    out = np.full((len(labels), len(heldout)), np.nan)
    filled = np.zeros((len(labels), len(heldout)), dtype=bool)
    ignored = 0
    for row in range(table.num_rows):
        key = (str(users[row]), str(items[row]), times[row]) if timed else (
            str(users[row]), str(items[row]))
        event = index.get(key)
        if event is None:
            ignored += 1
            continue
        m = label_index[members[row]]
        if filled[m, event]:
            raise DataError(
                "a second prediction for the same (user, item, timestamp, member)",
                source=name, row=row + 1)
        filled[m, event] = True
        out[m, event] = predictions[row]
    missing = np.argwhere(~filled)
    if len(missing):
        m, event = (int(v) for v in missing[np.lexsort((missing[:, 0], missing[:, 1]))[0]])
        member = f" (member {labels[m]!r})" if len(labels) > 1 else ""
        raise DataError(
            f"held-out event user {h_users[event]!r}, item {h_items[event]!r}, timestamp "
            f"{h_times[event]} has no prediction{member}; every held-out event needs one",
            source=name)
    info = {
        "source": name,
        "matched": int(filled.sum()),
        "ignored": ignored,
        "members": len(labels),
    }
    return out, info


def reward_fn_events(
    fn: Callable[[Context, torch.Tensor], torch.Tensor],
    history: Interactions,
    events: Interactions,
) -> np.ndarray:
    """Each member's prediction of each event, given its user's earlier events in ``history``:
    float64 ``[M, N]`` (``M = 1`` for a plain ``RewardFn``; an ensemble's ``.members``)."""
    member_events = getattr(fn, "member_events", None)
    if callable(member_events):
        return np.asarray(member_events(history, events), dtype=np.float64)
    max_len = max(int(getattr(fn, "history_len", DEFAULT_HISTORY) or 1), 1)
    seqs = event_sequences(history, events, max_len)
    members = getattr(fn, "members", None)
    parts = []
    for start in range(0, len(seqs.users), PREDICT_BATCH):
        rows = slice(start, start + PREDICT_BATCH)
        context = Context(
            torch.as_tensor(seqs.users[rows], dtype=torch.long),
            torch.as_tensor(seqs.history_items[rows], dtype=torch.long),
            torch.as_tensor(seqs.history_rewards[rows], dtype=torch.float32),
        )
        items = torch.as_tensor(seqs.targets[rows], dtype=torch.long)[:, None]
        with torch.no_grad():
            pred = members(context, items) if callable(members) else fn(context, items)[None]
        parts.append(np.asarray(pred.detach().cpu().double().numpy())[..., 0])
    if not parts:
        return np.zeros((1, 0))
    return np.concatenate(parts, axis=1)
