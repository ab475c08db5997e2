"""The audit's statistics, from ``evaluators.intervals`` (its swap point): a metric's ratio of
per-user sums with its interval, a paired difference of two such ratios with its p-value, a mean
of per-user values, and Holm's adjustment. Users are resampled in every interval."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from statsmodels.stats.power import TTestPower

from evaluators.intervals import (
    RatioComparison,
    adjust_pvalues,
    mean_interval,
    paired_ratio_difference,
    ratio_interval,
)
from rmdiag.audit.figures import Figure, finite_figure

# Percentile bootstrap: RMSE's interval is the square root of MSE's, which a percentile interval
# carries exactly (quantiles commute with monotone maps).
INTERVAL_METHOD = "percentile"

# Below this many users no bootstrap or t interval of a mean covers 93-97% on skewed or
# zero-heavy per-user values (about 84-91% at 20-50 users; benchmarks/interval_coverage.py,
# RESULTS.md "Interval coverage"): figures on fewer users carry `coverage_warning`.
COVERAGE_MIN_USERS = 200


def coverage_warning(n_users: int, what: str) -> str | None:
    """The warning for figures over ``n_users`` users (None from COVERAGE_MIN_USERS up)."""
    if n_users >= COVERAGE_MIN_USERS or n_users == 0:
        return None
    return (
        f"{what} has {n_users} users, fewer than {COVERAGE_MIN_USERS}: on skewed or zero-heavy "
        "per-user values its 95% intervals cover only about 84-93% of the time "
        "(benchmarks/interval_coverage.py), the upper end being the side that fails; read them "
        "as roughly 90% intervals"
    )


def finite(figure: Figure) -> Figure:
    """An evaluators figure as the audit reports it: its interval holding its value, or
    unavailable (with a reason) when it is not finite or was unavailable already."""
    if not figure.available:
        return figure
    assert figure.low is not None and figure.high is not None
    return finite_figure(figure.value, figure.low, figure.high,  # type: ignore[arg-type]
                         confidence=figure.confidence, method=figure.method)


def mean_figure(values: np.ndarray, *, confidence: float, n_resamples: int, seed: int) -> Figure:
    """Mean of per-user values with a bootstrap interval, users resampled
    (``evaluators.intervals.mean_interval``)."""
    return finite(mean_interval(values, INTERVAL_METHOD, confidence, n_resamples, seed))


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
    users = int(np.count_nonzero(np.asarray(denominator) > 0))
    if users < 2:
        return Figure.unavailable(f"{users} user(s) with events here; an interval needs 2")
    return finite(ratio_interval(numerator, denominator, INTERVAL_METHOD, confidence,
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
) -> tuple[Figure, float, RatioComparison]:
    """f(ratio a) - f(ratio b), users resampled jointly, and the two-sided p-value of the
    t-test of its delta-method linearization across users
    (``evaluators.intervals.paired_ratio_difference``, whose whole result comes third: its
    ``n`` and ``spread`` size the detectable difference). One denominator when a and b are two
    models on the same events."""
    comparison = paired_ratio_difference(
        numerator_a, numerator_b, denominator_a, denominator_b, INTERVAL_METHOD, confidence,
        n_resamples, seed, transform
    )
    return finite(comparison.difference), comparison.p_t, comparison


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over one family of tests."""
    return [float(p) for p in adjust_pvalues(list(p_values), "holm")]


def detectable_difference(n: int, spread: float, *, alpha: float, power: float) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` over ``n``
    users detects with probability ``power``: statsmodels' exact (noncentral t) effect size
    times ``spread``, the standard deviation of the per-user (linearized) differences the test
    uses. None when fewer than two users or no spread."""
    if n < 2 or spread == 0:
        return None
    return _effect_size(n, alpha, power) * spread


@functools.lru_cache(maxsize=256)
def _effect_size(n: int, alpha: float, power: float) -> float:
    # one root-finding per (n, alpha, power): every comparison of one slice shares it
    # (statsmodels returns a 1-element array instead of a float when its fallback solver ran)
    effect = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.ravel(effect)[0])
