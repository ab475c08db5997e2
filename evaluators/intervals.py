"""Confidence intervals for means over users, paired comparisons and multiplicity corrections.

The one interval routine of the project is `mean_interval`; everything else calls it.

- `mean_interval(values, method)`: the mean with a percentile or BCa bootstrap interval
  (users resampled with replacement) or a Student-t interval.
- `paired_difference(a, b)`: the mean of a - b with the same interval (resampling the per-user
  differences resamples users jointly for both systems), plus the paired t-test, the Wilcoxon
  signed-rank test and a sign-flip randomization test.
- `adjust_pvalues(p, "holm" | "fdr_bh")`: statsmodels' `multipletests`.

Speed without approximation. A bootstrap mean only depends on how often each value is drawn.
Per-user ranking metrics have few distinct values (HR is 0/1; single-target NDCG@k without ties
takes at most k+1 values), so the resample counts over the d distinct values are drawn directly:
Multinomial(n, frequencies), which is exactly the distribution of the counts under resampling of
n users, for O(d) work per resample instead of O(n). For generic values, a compiled loop draws the
n indices of each resample from its own counter-seeded stream and sums as it goes (no [B, n]
index matrix). The sign-flip test uses the same idea: with few distinct |differences| the sum of
signs within each group is 2 Binomial(c, 1/2) - c. Results are deterministic for a given seed.
BCa needs the jackknife; for the mean it is closed form (see `_bca_acceleration`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
from statsmodels.stats.multitest import multipletests

from evaluators import _kernels

__all__ = [
    "Figure",
    "PairedComparison",
    "mean_interval",
    "mean_intervals",
    "paired_difference",
    "bootstrap_means",
    "sign_flip_pvalue",
    "adjust_pvalues",
]

METHODS = ("bca", "percentile", "t")
# Draw counts over distinct values when d * _COUNTS_PATH_RATIO <= n: one binomial draw costs
# about as much as this many indexed reads in the compiled loop (measured on x86-64).
_COUNTS_PATH_RATIO = 16


@dataclass(frozen=True)
class Figure:
    """A point estimate with its interval at the stated confidence, or the reason it has none.

    An unavailable figure (``Figure.unavailable(reason)``) has ``value``, ``low`` and ``high``
    None and says why in ``reason``; ``available`` tells the two apart. ``confidence`` and
    ``method`` describe how the interval was made; the JSON form (``as_dict``) leaves them out.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    confidence: float = 0.95
    method: str = "bca"
    reason: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> Figure:
        """A figure that could not be computed, and why (a sentence for a report)."""
        return cls(None, None, None, reason=reason)

    @property
    def available(self) -> bool:
        return self.value is not None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of DESIGN.md's output contract: {"value", "low", "high"}, numbers or
        null, and "reason" when one is set."""
        out: dict[str, Any] = {
            part: None if number is None else float(number)
            for part, number in (("value", self.value), ("low", self.low), ("high", self.high))
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def text(self, digits: int = 3) -> str:
        """``value [low, high]`` with ``digits`` decimals, or ``n/a (reason)``."""
        if self.value is None or self.low is None or self.high is None:
            return f"n/a ({self.reason})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class PairedComparison:
    """Mean difference a - b over users with its interval, and three two-sided p-values."""

    difference: Figure
    p_t: float
    p_wilcoxon: float
    p_randomization: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference.as_dict(),
            "p_t": float(self.p_t),
            "p_wilcoxon": float(self.p_wilcoxon),
            "p_randomization": float(self.p_randomization),
            "n": int(self.n),
        }


def _values(values: Any, name: str = "values") -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per user), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 values for an interval, got {arr.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has a non-finite value at index {int(bad[0])}: {arr[bad[0]]}")
    return arr


def _stream_seed(seed: int, purpose: int) -> int:
    """A well-mixed 63-bit seed for the compiled streams, from the user's seed."""
    state = np.random.SeedSequence([int(seed), purpose]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def bootstrap_means(values: Any, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Means of `n_resamples` bootstrap resamples (size n, with replacement) of `values`.

    Exact in distribution; counts over distinct values when there are few of them.
    """
    x = _values(values)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = x.shape[0]
    distinct, counts = np.unique(x, return_counts=True)
    if distinct.shape[0] * _COUNTS_PATH_RATIO <= n:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, counts / n, size=n_resamples)
        return draws @ distinct / n
    return _kernels.bootstrap_means(np.ascontiguousarray(x), int(n_resamples),
                                    _stream_seed(seed, 1))


def _bca_acceleration(x: np.ndarray) -> float:
    """Jackknife acceleration of the mean, closed form.

    Leaving out x_i gives mean (S - x_i)/(n-1), so (jackknife mean - leave-one-out mean)
    = (x_i - mean)/(n-1); the (n-1) factors cancel in Efron's
    a = sum d^3 / (6 (sum d^2)^1.5).
    """
    d = x - x.mean()
    ss = float(np.sum(d * d))
    return float(np.sum(d * d * d) / (6.0 * ss**1.5))


def _interval_from_bootstrap(
    x: np.ndarray, means: np.ndarray, method: str, confidence: float
) -> tuple[float, float]:
    alpha = 1.0 - confidence
    if method == "percentile":
        lo_q, hi_q = alpha / 2, 1 - alpha / 2
    else:
        theta = x.mean()
        b = means.shape[0]
        # mid-rank of the estimate among the resampled means (as scipy.stats.bootstrap)
        share = (np.count_nonzero(means < theta) + np.count_nonzero(means <= theta)) / (2 * b)
        share = min(max(share, 0.5 / b), 1 - 0.5 / b)  # keep z0 finite
        z0 = scipy.special.ndtri(share)
        a = _bca_acceleration(x)
        z = scipy.special.ndtri(np.array([alpha / 2, 1 - alpha / 2]))
        adjusted = scipy.special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        lo_q, hi_q = float(adjusted[0]), float(adjusted[1])
    lo, hi = np.percentile(means, [100 * lo_q, 100 * hi_q])
    return float(lo), float(hi)


def mean_interval(
    values: Any,
    method: str = "bca",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Figure:
    """The mean of per-user `values` with a `confidence` interval.

    method: "bca" (bias-corrected and accelerated bootstrap, Efron 1987), "percentile"
    (bootstrap percentiles) or "t" (Student-t, scipy). Bootstrap intervals use `n_resamples`
    resamples of the users drawn with `seed`; quantiles interpolate linearly, as
    scipy.stats.bootstrap does. Constant values give a zero-width interval.
    """
    x = _values(values)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    value = float(x.mean())
    if np.all(x == x[0]):
        return Figure(value, value, value, confidence, method)
    if method == "t":
        ci = scipy.stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
        return Figure(value, float(ci.low), float(ci.high), confidence, method)
    means = bootstrap_means(x, n_resamples, seed)
    lo, hi = _interval_from_bootstrap(x, means, method, confidence)
    return Figure(value, lo, hi, confidence, method)


def mean_intervals(
    per_user: Mapping[str, Any],
    method: str = "bca",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Figure]:
    """`mean_interval` of each entry, e.g. of the dict `ranking_metrics` returns."""
    return {
        name: mean_interval(v, method, confidence, n_resamples, seed)
        for name, v in per_user.items()
    }


def sign_flip_pvalue(differences: Any, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired randomization test of mean(differences) = 0 by random sign flips.

    Exact (all 2^m sign patterns of the m non-zero differences) when 2^m <= n_resamples;
    otherwise Monte Carlo with p = (1 + #{|T*| >= |T|}) / (1 + n_resamples), which is a valid
    p-value (Phipson & Smyth 2010). Statistic ties within 100 ulps count as >=, as in
    scipy.stats.permutation_test.
    """
    d = _values(differences, "differences")
    n = d.shape[0]
    observed = abs(d.mean())
    nonzero = np.abs(d[d != 0])
    m = nonzero.shape[0]
    if m == 0:
        return 1.0
    tol = 100 * np.finfo(np.float64).eps * max(observed, 1e-300)
    if 2**m <= n_resamples:
        patterns = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1) * 2 - 1
        null = np.abs(patterns @ nonzero) / n
        return float(np.mean(null >= observed - tol))
    distinct, counts = np.unique(nonzero, return_counts=True)
    if distinct.shape[0] * _COUNTS_PATH_RATIO <= m:
        rng = np.random.default_rng(seed)
        positives = rng.binomial(counts, 0.5, size=(n_resamples, distinct.shape[0]))
        null = np.abs((2 * positives - counts) @ distinct) / n
    else:
        null = np.abs(_kernels.sign_flip_means(np.ascontiguousarray(nonzero), int(n_resamples),
                                               _stream_seed(seed, 2))) * (m / n)
    return float((1 + np.count_nonzero(null >= observed - tol)) / (1 + n_resamples))


def paired_difference(
    a: Any,
    b: Any,
    method: str = "bca",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare two systems scored on the same users: mean(a - b), its interval and p-values.

    The interval is `mean_interval` of the per-user differences (resampling users jointly).
    p_t: paired t-test; p_wilcoxon: Wilcoxon signed-rank (zero differences dropped); both
    from scipy. p_randomization: `sign_flip_pvalue`. All two-sided. When every difference is
    equal the t statistic is undefined: p_t is 1 for an all-zero difference and 0 otherwise.
    """
    x = _values(a, "a")
    y = _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must score the same users: shapes {x.shape} and {y.shape}")
    d = x - y
    figure = mean_interval(d, method, confidence, n_resamples, seed)
    if np.all(d == d[0]):
        p_t = 1.0 if d[0] == 0 else 0.0
    else:
        p_t = float(scipy.stats.ttest_rel(x, y).pvalue)
    if np.all(d == 0):
        p_w = 1.0
    else:
        p_w = float(scipy.stats.wilcoxon(d).pvalue)
    p_r = sign_flip_pvalue(d, n_resamples, seed)
    return PairedComparison(figure, p_t, p_w, p_r, int(d.shape[0]))


def adjust_pvalues(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values: "holm" (family-wise error) or "fdr_bh"
    (Benjamini-Hochberg false discovery rate), via statsmodels.stats.multitest.multipletests."""
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"method must be 'holm' or 'fdr_bh', got {method!r}")
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return p
    if np.any(~np.isfinite(p) | (p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    return np.asarray(multipletests(p, method=method)[1], dtype=np.float64)
