"""What the audit reads: (train, held-out) from a log or a log and a holdout file, and the
refusal of data that cannot support an audit."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from rmdiag.data import DataError, Interactions, encode, load, read_table
from rmdiag.split import last_events_out


class InsufficientDataError(DataError):
    """The data cannot support an audit (nothing held out, one item, constant rewards...).

    A ``rmdiag.data.DataError`` (so a ``ValueError``): the CLI maps it to exit code 2.
    """


def check_auditable(train: Interactions, heldout: Interactions) -> None:
    """Refuse data that cannot support an audit, with a message that says why."""
    source = train.source
    if len(heldout) == 0:
        raise InsufficientDataError(
            "no held-out events: every user has too few events to hold any out (leave-last-out "
            "needs users with at least 3 events), or the holdout file is empty",
            source=source,
        )
    if len(train) == 0:
        raise InsufficientDataError("no training events", source=source)
    n_train_items = len(np.unique(train.items))
    if n_train_items < 2:
        raise InsufficientDataError(
            f"the training events cover {n_train_items} item; an audit needs at least 2",
            source=source,
        )
    if np.ptp(train.rewards) == 0:
        raise InsufficientDataError(
            f"every training reward equals {train.rewards[0]:g}: there is nothing to predict",
            source=source,
        )
    if np.ptp(heldout.rewards) == 0:
        raise InsufficientDataError(
            f"every held-out reward equals {heldout.rewards[0]:g}: errors and orderings cannot "
            "tell models apart",
            source=source,
        )


def audit_inputs(
    data: str | os.PathLike[str] | pa.Table | Any,
    holdout: str | os.PathLike[str] | pa.Table | Any | None = None,
    columns: Mapping[str, str] | None = None,
    heldout_per_user: int = 2,
) -> tuple[Interactions, Interactions]:
    """(train, held-out) for an audit; ``data`` is a path, a table or an ``Interactions``.

    Without ``holdout``: leave-last-k-out on ``data``; the held-out events are every user's last
    ``heldout_per_user`` events (by default two: the pipeline split's valid and test), the rest
    trains. More events per user give more within-user pairs (up to k(k-1)/2 per user), hence
    power to see ordering gains. With ``holdout`` (for example
    ratings collected under randomized exposure): all of ``data`` trains and the holdout's
    events are held out; both are encoded together so ids agree.
    """
    if holdout is None:
        log = data if isinstance(data, Interactions) else load(data, columns)
        train, heldout = last_events_out(log, heldout_per_user)
    else:
        raw, name = read_table(data, columns)
        raw_holdout, holdout_name = read_table(holdout, columns)
        canonical = ["user_id", "item_id", "timestamp", "reward"]
        raw, raw_holdout = raw.select(canonical), raw_holdout.select(canonical)
        if raw.schema != raw_holdout.schema:  # e.g. integer ids in one file, strings in the other
            raw = raw.cast(
                pa.schema(
                    [
                        (c, pa.string()) if c.endswith("_id") else raw.schema.field(c)
                        for c in canonical
                    ]
                )
            )
            raw_holdout = raw_holdout.cast(raw.schema)
        log = encode(pa.concat_tables([raw, raw_holdout]), source=f"{name} + {holdout_name}")
        is_holdout = log.column("row") >= raw.num_rows
        train, heldout = log.take(~is_holdout), log.take(is_holdout)
    check_auditable(train, heldout)
    return train, heldout
