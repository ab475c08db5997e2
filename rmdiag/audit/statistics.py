"""The audit's statistics, from ``evaluators.intervals`` (its swap point): a metric's ratio of
per-user sums with its interval, a paired difference of two such ratios with its p-value, a mean
of per-user values, and Holm's adjustment. Users are resampled in every interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluators.intervals import (
    adjust_pvalues,
    mean_interval,
    paired_ratio_difference,
    ratio_interval,
)
from rmdiag.audit.figures import Figure, finite_figure

# Percentile bootstrap: RMSE's interval is the square root of MSE's, which a percentile interval
# carries exactly (quantiles commute with monotone maps).
INTERVAL_METHOD = "percentile"


def _finite(figure: Figure) -> Figure:
    assert figure.value is not None and figure.low is not None and figure.high is not None
    return finite_figure(figure.value, figure.low, figure.high,
                         confidence=figure.confidence, method=figure.method)


def mean_figure(values: np.ndarray, *, confidence: float, n_resamples: int, seed: int) -> Figure:
    """Mean of per-user values with a bootstrap interval, users resampled
    (``evaluators.intervals.mean_interval``)."""
    return _finite(mean_interval(values, INTERVAL_METHOD, confidence, n_resamples, seed))


def ratio_figure(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    transform: str = "identity",
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Figure:
    """sum(numerator) / sum(denominator) over users (``transform`` "sqrt": its square root, e.g.
    RMSE from squared errors over event counts), users resampled
    (``evaluators.intervals.ratio_interval``)."""
    return _finite(ratio_interval(numerator, denominator, INTERVAL_METHOD, confidence,
                                  n_resamples, seed, transform))


def paired_ratio_stats(
    numerator_a: np.ndarray,
    numerator_b: np.ndarray,
    denominator_a: np.ndarray,
    denominator_b: np.ndarray | None = None,
    *,
    transform: str = "identity",
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[Figure, float]:
    """f(ratio a) - f(ratio b), users resampled jointly, and the two-sided p-value of the
    t-test of its delta-method linearization across users
    (``evaluators.intervals.paired_ratio_difference``). One denominator when a and b are two
    models on the same events."""
    comparison = paired_ratio_difference(
        numerator_a, numerator_b, denominator_a, denominator_b, INTERVAL_METHOD, confidence,
        n_resamples, seed, transform
    )
    return _finite(comparison.difference), comparison.p_t


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over one family of tests."""
    return [float(p) for p in adjust_pvalues(list(p_values), "holm")]
