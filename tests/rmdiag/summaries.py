"""summary.json compared across runs: without the figures that vary run to run."""

from __future__ import annotations

from typing import Any

WALL_CLOCK = {"timings", "memory", "seconds", "train_seconds"}  # they vary run to run


def comparable(value: Any) -> Any:
    """summary.json (or any part of it) without its wall-clock figures."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value
