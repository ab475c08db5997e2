"""The audit's statistics, from ``evaluators.intervals`` (its swap point): a mean of per-user
values with its interval, a paired difference with its p-value, Holm's adjustment, and
resamples of users."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from statsmodels.stats.power import TTestPower

from evaluators.intervals import adjust_pvalues, mean_interval, paired_difference
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


def mean_figure(values: np.ndarray, *, confidence: float, n_resamples: int, seed: int) -> Figure:
    """Mean of per-user values with a bootstrap interval, users resampled
    (``evaluators.intervals.mean_interval``, the project's one interval routine)."""
    figure = mean_interval(values, INTERVAL_METHOD, confidence, n_resamples, seed)
    return finite_figure(figure.value, figure.low, figure.high)


def paired_stats(
    a: np.ndarray, b: np.ndarray, *, confidence: float, n_resamples: int, seed: int
) -> tuple[Figure, float]:
    """Mean of the per-user differences a - b (users resampled jointly) and the two-sided
    p-value of a paired t-test across users (``evaluators.intervals.paired_difference``)."""
    comparison = paired_difference(a, b, INTERVAL_METHOD, confidence, n_resamples, seed)
    difference = comparison.difference
    return finite_figure(difference.value, difference.low, difference.high), comparison.p_t


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over one family of tests."""
    return [float(p) for p in adjust_pvalues(list(p_values), "holm")]


def user_resamples(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """Indices [n_resamples, n_users] of users drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_users, size=(n_resamples, n_users))


def detectable_difference(differences: np.ndarray, *, alpha: float, power: float) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` detects
    with probability ``power``: statsmodels' exact (noncentral t) effect size for n users times
    the per-user differences' standard deviation. None when fewer than two users or no spread."""
    n = len(differences)
    spread = float(np.std(differences, ddof=1)) if n >= 2 else 0.0
    if n < 2 or spread == 0:
        return None
    return _effect_size(n, alpha, power) * spread


@functools.lru_cache(maxsize=256)
def _effect_size(n: int, alpha: float, power: float) -> float:
    # one root-finding per (n, alpha, power): every comparison of one slice shares it
    # (statsmodels returns a 1-element array instead of a float when its fallback solver ran)
    effect = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.ravel(effect)[0])
