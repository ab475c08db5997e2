"""``Figure``: a point estimate with its interval, or the reason it is unavailable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Figure:
    """A point estimate with its interval; ``value is None`` (with ``reason``) when unavailable."""

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> Figure:
        return cls(None, None, None, reason)

    @property
    def available(self) -> bool:
        return self.value is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "low": self.low, "high": self.high}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return f"n/a ({self.reason})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def finite_figure(value: float, low: float, high: float) -> Figure:
    if not all(np.isfinite([value, low, high])):
        return Figure.unavailable("the interval could not be computed (degenerate resamples)")
    return Figure(float(value), float(min(low, value)), float(max(high, value)))
