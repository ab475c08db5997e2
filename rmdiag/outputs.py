"""Writing a command's results: all files at the end, each atomically, so failure leaves nothing."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def to_json(payload: Any) -> str:
    """JSON with NaN/inf refused: a figure that is not a number is a bug, never an output."""
    return json.dumps(_check_finite(payload), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _check_finite(value: Any, path: str = "$") -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number at {path}")
    if isinstance(value, Mapping):
        return {str(k): _check_finite(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_check_finite(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], content: str | bytes) -> None:
    """Write to a temp file beside `path`, then rename over it.

    The file gets the mode an ordinary `open()` would give it (0666 less the umask): mkstemp's
    private 0600 would hide results from the rest of a team's group.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(out_dir: str | os.PathLike[str], files: Mapping[str, str | bytes]) -> list[Path]:
    """Write every file of a finished command into `out_dir` (created only now)."""
    written = []
    for name, content in files.items():
        target = Path(out_dir) / name
        write_atomic(target, content)
        written.append(target)
    return written
