"""Bootstrap, t and paired intervals, p-values and multiplicity corrections."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from evaluators.intervals import (
    Figure,
    adjust_pvalues,
    bootstrap_means,
    mean_interval,
    paired_difference,
    sign_flip_pvalue,
)

NDCG_VALUES = 1 / np.log2(np.arange(1, 11) + 1)


def _ndcg_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-user NDCG@10-like values: 0 with prob. 0.7, else 1/log2(r+1) for r uniform 1..10."""
    hit = rng.random(n) < 0.3
    return np.where(hit, NDCG_VALUES[rng.integers(0, 10, n)], 0.0)


NDCG_TRUE_MEAN = 0.3 * NDCG_VALUES.mean()


@pytest.mark.parametrize("method", ["bca", "percentile", "t"])
@pytest.mark.parametrize("kind", ["few-distinct", "continuous"])
def test_coverage_of_nominal_95_percent(method: str, kind: str) -> None:
    """Over 1500 simulated samples the 95% interval covers the true mean 93-97% of the time."""
    rng = np.random.default_rng(2024)
    n_samples, n_users = 1500, 400
    covered = 0
    for i in range(n_samples):
        if kind == "few-distinct":
            x, true_mean = _ndcg_like(rng, n_users), NDCG_TRUE_MEAN
        else:
            x, true_mean = rng.gamma(2.0, 1.0, n_users), 2.0  # skewed, continuous
        fig = mean_interval(x, method, 0.95, n_resamples=1000, seed=i)
        covered += fig.low <= true_mean <= fig.high
    print(f"{kind} {method}: coverage {covered / n_samples:.3f}")
    assert 0.93 <= covered / n_samples <= 0.97, covered / n_samples


def test_bootstrap_paths_are_exact_in_distribution() -> None:
    """Counts over distinct values and the compiled index resampler give the bootstrap law:
    mean of resample means = sample mean, variance = population variance / n."""
    rng = np.random.default_rng(5)
    few = _ndcg_like(rng, 3000)  # 11 distinct values -> counts path
    many = rng.normal(size=500)  # distinct values -> compiled resampler
    for x in (few, many):
        means = bootstrap_means(x, 40_000, seed=1)
        se = np.sqrt(x.var() / x.size)
        assert abs(means.mean() - x.mean()) < 4 * se / np.sqrt(40_000)
        assert abs(means.var() / (x.var() / x.size) - 1) < 0.03
        # skewness of the resample mean = skewness(x) / sqrt(n)
        skew = scipy.stats.skew(means)
        assert abs(skew - scipy.stats.skew(x) / np.sqrt(x.size)) < 0.05
    # indices are uniform: resampling 0..n-1 gives mean (n-1)/2 and the right spread
    x = np.arange(7, dtype=float)
    means = bootstrap_means(x, 200_000, seed=2)
    assert abs(means.mean() - 3.0) < 0.005
    assert abs(means.var() - x.var() / 7) < 0.01


def test_intervals_agree_with_scipy() -> None:
    rng = np.random.default_rng(9)
    for x in (_ndcg_like(rng, 1500), rng.exponential(size=400)):
        for method in ("percentile", "bca"):
            ours = mean_interval(x, method, 0.95, n_resamples=20_000, seed=3)
            ref = scipy.stats.bootstrap(
                (x,), np.mean, n_resamples=20_000, method=method, random_state=4
            ).confidence_interval
            width = ref.high - ref.low
            assert abs(ours.low - ref.low) < 0.03 * width
            assert abs(ours.high - ref.high) < 0.03 * width
        t = mean_interval(x, "t")
        ref_t = scipy.stats.t.interval(0.95, x.size - 1, x.mean(), scipy.stats.sem(x))
        np.testing.assert_allclose([t.low, t.high], ref_t, rtol=1e-12)


def test_seeded_and_deterministic() -> None:
    x = np.random.default_rng(1).exponential(size=300)
    assert mean_interval(x, seed=7) == mean_interval(x, seed=7)
    assert mean_interval(x, seed=7) != mean_interval(x, seed=8)
    d = np.random.default_rng(2).normal(0.1, 1, 300)
    assert sign_flip_pvalue(d, seed=3) == sign_flip_pvalue(d, seed=3)


def test_figure_contract_and_edge_cases() -> None:
    fig = mean_interval([0.5, 0.5, 0.5])
    assert fig.as_dict() == {"value": 0.5, "low": 0.5, "high": 0.5}
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="non-finite value at index 1"):
        mean_interval([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="method must be one of"):
        mean_interval([1.0, 2.0], method="normal")


def test_figure_text_json_and_unavailable_figures() -> None:
    fig = Figure(0.25, 0.125, 0.5, 0.9, "percentile")
    assert fig.available and fig.text(2) == "0.25 [0.12, 0.50]"
    assert fig.as_dict() == {"value": 0.25, "low": 0.125, "high": 0.5}
    missing = Figure.unavailable("too few users")
    assert not missing.available and missing.text() == "n/a (too few users)"
    assert missing.as_dict() == {"value": None, "low": None, "high": None,
                                 "reason": "too few users"}
    # numpy scalars come out as plain floats, so the JSON form is the same either way
    assert type(Figure(np.float64(1.0), np.float32(0.5), 2).as_dict()["high"]) is float


def test_sign_flip_matches_exact_enumeration_and_scipy() -> None:
    rng = np.random.default_rng(4)
    small = rng.normal(0.4, 1, 10)  # 2^10 patterns <= n_resamples: exact
    exact = scipy.stats.permutation_test(
        (small,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf,
    ).pvalue
    assert sign_flip_pvalue(small, n_resamples=10_000) == pytest.approx(exact, abs=1e-12)
    for d in (rng.normal(0.1, 1, 200), np.round(rng.normal(0.1, 1, 400))):  # generic, few values
        ref = scipy.stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=20_000, random_state=1
        ).pvalue
        ours = sign_flip_pvalue(d, n_resamples=20_000, seed=1)
        assert abs(ours - ref) < 4 * np.sqrt(ref * (1 - ref) / 20_000) + 1e-3


def test_paired_difference_resamples_users_jointly() -> None:
    rng = np.random.default_rng(8)
    base = rng.random(300)
    a = base + rng.normal(0.05, 0.05, 300)  # strongly correlated with b = base
    cmp = paired_difference(a, base, "percentile", seed=1)
    assert cmp.difference.low > 0.04 and cmp.difference.high < 0.06
    assert cmp.p_t < 1e-10 and cmp.p_wilcoxon < 1e-10 and cmp.p_randomization < 1e-3
    assert cmp.p_t == pytest.approx(scipy.stats.ttest_rel(a, base).pvalue)
    assert cmp.p_wilcoxon == pytest.approx(scipy.stats.wilcoxon(a - base).pvalue)
    same = paired_difference(base, base)
    assert same.as_dict()["difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert same.p_t == same.p_wilcoxon == same.p_randomization == 1.0
    with pytest.raises(ValueError, match="same users"):
        paired_difference(a, base[:-1])


def test_adjust_pvalues_holm_and_bh() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1])
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    with pytest.raises(ValueError, match="holm"):
        adjust_pvalues(p, "bonferroni")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_pvalues([0.5, 1.5])
