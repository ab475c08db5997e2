"""What the stand-alone stages share: the log's leave-last-out split, as `rmdiag run` builds
it, and the check that a saved model speaks the data's ids."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rmdiag.data import DataError, Interactions, load
from rmdiag.persist import load_ids, load_reward_model
from rmdiag.rewards.base import RewardModel
from rmdiag.split import Split, leave_last_out

# `rmdiag run`'s default history length (`RunConfig.max_len`), for `rmdiag train sft`.
DEFAULT_MAX_LEN = 50


def split_data(
    data: str | os.PathLike[str], columns: Mapping[str, str] | None = None
) -> tuple[Interactions, Split]:
    """The log and its leave-last-out split (each user's last event tests, the one before it
    validates), refused when policies cannot be chosen and scored on it (as `rmdiag run`)."""
    log = load(data, columns)
    split = leave_last_out(log)
    if len(split.test) < 2 or len(split.valid) < 2:
        raise DataError(
            f"{len(split.valid)} validation and {len(split.test)} test events: policies need "
            "at least 2 of each to be trained and scored (leave-last-out needs users with at "
            "least 3 events)", source=log.source,
        )
    return log, split


def _differs(saved: np.ndarray, ours: np.ndarray) -> str | None:
    if len(saved) != len(ours):
        return f"{len(saved) - 1} saved against {len(ours) - 1} in the data"
    for index, (a, b) in enumerate(zip(saved[1:].tolist(), ours[1:].tolist(), strict=True), 1):
        if a != b or type(a) is not type(b):
            return f"encoded id {index} is {a!r} there and {b!r} in the data"
    return None


def check_ids(directory: str | os.PathLike[str], log: Interactions, what: str) -> None:
    """Refuse a saved model or policy (`what`) whose ids.json is missing or differs from the
    log's encoding: its item i would be another item of this catalog."""
    saved = load_ids(directory)
    path = Path(directory) / "ids.json"
    if saved is None:
        raise DataError(f"{what} was saved without ids.json, so its encoding cannot be checked "
                        f"against {log.source}", source=str(directory))
    for name, ours, theirs in (("user", log.user_ids, saved[0]), ("item", log.item_ids, saved[1])):
        why = _differs(np.asarray(theirs), np.asarray(ours))
        if why is not None:
            raise DataError(
                f"the {what}'s {name} ids differ from those of {log.source} ({why}): it was "
                "trained on another log (or with --holdout, whose events are encoded too)",
                source=str(path),
            )


def reward_model_for(
    directory: str | os.PathLike[str] | None, log: Interactions
) -> RewardModel | None:
    """The saved reward model in `directory` (None without one), refused when its ids are not
    the data's encoding."""
    if directory is None:
        return None
    model = load_reward_model(directory)
    check_ids(directory, log, "reward model")
    return model


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from a file, or DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not readable as JSON ({error})", source=str(path)) from error
    if not isinstance(payload, dict):
        raise DataError("expected a JSON object", source=str(path))
    return payload


def require(payload: Any, keys: str, kind: type | tuple[type, ...], source: str) -> Any:
    """`payload[k1][k2]...` for dotted `keys`, of type `kind`, or DataError naming the key."""
    value = payload
    walked: list[str] = []
    for key in keys.split("."):
        walked.append(key)
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"missing key '{'.'.join(walked)}'", source=source)
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"key '{keys}' has the wrong type ({type(value).__name__})", source=source)
    return value
