"""The audit's figures: ``evaluators.intervals.Figure`` (the project's one figure class,
re-exported here), and ``finite_figure`` for intervals that may have come out degenerate."""

from __future__ import annotations

import numpy as np

from evaluators.intervals import Figure

__all__ = ["Figure", "finite_figure"]


def finite_figure(
    value: float, low: float, high: float, *, confidence: float = 0.95, method: str = "bca"
) -> Figure:
    """A figure whose interval holds its value, or an unavailable one if anything is not finite."""
    if not all(np.isfinite([value, low, high])):
        return Figure.unavailable("the interval could not be computed (degenerate resamples)")
    return Figure(
        float(value), float(min(low, value)), float(max(high, value)), confidence, method
    )
