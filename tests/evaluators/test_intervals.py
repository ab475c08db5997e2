"""Bootstrap, t and paired intervals, p-values and multiplicity corrections."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from evaluators import intervals
from evaluators.intervals import (
    Figure,
    adjust_pvalues,
    bootstrap_means,
    grouped_bootstrap,
    mean_interval,
    paired_difference,
    paired_ratio_difference,
    ratio_interval,
    sign_flip_pvalue,
    spearman_interval,
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


# ---- ratio estimator: a ratio of per-user sums, users resampled ---------------------------------

_M64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


def _reference_draws(n: int, n_resamples: int, seed: int) -> list[list[int]]:
    """The compiled resampler's user indices, in plain Python: resample b has its own splitmix64
    stream; each 32-bit word w gives index (w n) >> 32 unless its low half falls below 2^32 mod n
    (Lemire's unbiased rejection)."""
    stream = intervals._stream_seed(seed, 1)
    threshold = (1 << 32) % n
    draws = []
    for b in range(n_resamples):
        state = (stream * 0xD1B54A32D192ED03 + b) & _M64
        drawn: list[int] = []
        while len(drawn) < n:
            state, x = _splitmix64(state)
            for word in (x & 0xFFFFFFFF, x >> 32):
                p = word * n
                if (p & 0xFFFFFFFF) >= threshold and len(drawn) < n:
                    drawn.append(p >> 32)
        draws.append(drawn)
    return draws


def _reference_bounds(theta, resamples, jackknife, method: str, confidence: float, scale=None):
    """Percentile or BCa bounds, written out from Efron & Tibshirani (1993), ch. 14; resamples
    within 1e-12 * scale of theta tie with it (sums in another order round differently)."""
    resamples = np.asarray(resamples)
    alpha = 1 - confidence
    if method == "percentile":
        q = [alpha / 2, 1 - alpha / 2]
    else:
        b = len(resamples)
        tol = 1e-12 * abs(theta if scale is None else scale)
        below = sum(r < theta - tol for r in resamples)
        share = (below + sum(r <= theta + tol for r in resamples)) / (2 * b)
        z0 = scipy.stats.norm.ppf(min(max(share, 0.5 / b), 1 - 0.5 / b))
        d = [np.mean(jackknife) - j for j in jackknife]
        ss = sum(v * v for v in d)
        a = sum(v**3 for v in d) / (6 * ss**1.5) if ss > 0 else 0.0
        q = [scipy.stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
             for z in scipy.stats.norm.ppf([alpha / 2, 1 - alpha / 2])]
    return np.percentile(resamples, [100 * q[0], 100 * q[1]])


@st.composite
def _users(draw, n_parts: int = 1):
    """Per-user (numerators..., denominator): unequal counts 0..6, at least 2 users with events,
    numerators 0 where the count is 0 (a user with no event has no sum)."""
    n = draw(st.integers(2, 12))
    counts = np.array(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), dtype=float)
    if np.count_nonzero(counts) < 2:
        counts[:2] = [1.0, 3.0]
    parts = []
    for _ in range(n_parts):
        rates = np.array(draw(st.lists(st.floats(0, 5), min_size=n, max_size=n)))
        parts.append(np.round(rates * counts, 3))
    return (*parts, counts)


@settings(max_examples=40)
@given(_users(), st.sampled_from(["percentile", "bca"]), st.sampled_from(["identity", "sqrt"]),
       st.integers(0, 3))
def test_ratio_interval_is_the_plain_loop_bootstrap_of_the_ratio(users, method, transform, seed):
    num, den = users
    b = 200
    fig = ratio_interval(num, den, method, 0.9, n_resamples=b, seed=seed, transform=transform)
    # the reference: users with events only, each resample a list of users, sums in a loop
    keep = [i for i in range(len(den)) if den[i] > 0]
    n_k, d_k = [num[i] for i in keep], [den[i] for i in keep]
    ratio = sum(n_k) / sum(d_k)
    resamples = []
    for drawn in _reference_draws(len(keep), b, seed):
        resamples.append(sum(n_k[i] for i in drawn) / sum(d_k[i] for i in drawn))
    jackknife = [(sum(n_k) - n_k[i]) / (sum(d_k) - d_k[i]) for i in range(len(keep))]
    if all(abs(x * sum(d_k) - y * sum(n_k)) == 0 for x, y in zip(n_k, d_k, strict=True)):
        low = high = ratio
    else:
        low, high = _reference_bounds(ratio, resamples, jackknife, method, 0.9)
    f = np.sqrt if transform == "sqrt" else (lambda v: v)
    np.testing.assert_allclose([fig.value, fig.low, fig.high], [f(ratio), f(low), f(high)],
                               rtol=1e-9, atol=1e-12)


@settings(max_examples=30)
@given(_users(n_parts=2), st.booleans(), st.sampled_from(["identity", "sqrt"]), st.integers(0, 3))
def test_paired_ratio_difference_is_the_plain_loop_bootstrap(users, two_parts, transform, seed):
    a, b_num, den = users
    other = np.roll(den, 1) if two_parts else None  # a second part's counts (e.g. train events)
    if two_parts:
        b_num = np.where(other > 0, b_num + 1.0, 0.0)
    n_res = 150
    cmp = paired_ratio_difference(a, b_num, den, other, "percentile", 0.95, n_res, seed,
                                  transform=transform)
    den_b = den if other is None else other
    keep = [i for i in range(len(den)) if den[i] > 0 or den_b[i] > 0]
    f = np.sqrt if transform == "sqrt" else (lambda v: v)

    def statistic(rows):
        sums = [sum(x[i] for i in rows) for x in (a, b_num, den, den_b)]
        if sums[2] == 0 or sums[3] == 0:
            return None  # this resample drew no event of one part: dropped
        return f(sums[0] / sums[2]) - f(sums[1] / sums[3])

    value = statistic(keep)
    resamples = [statistic([keep[i] for i in drawn])
                 for drawn in _reference_draws(len(keep), n_res, seed)]
    resamples = [r for r in resamples if r is not None]
    assert cmp.n == len(keep) and cmp.difference.value == pytest.approx(value, abs=1e-12)
    if cmp.difference.low != cmp.difference.high:
        np.testing.assert_allclose([cmp.difference.low, cmp.difference.high],
                                   np.percentile(resamples, [2.5, 97.5]), rtol=1e-9, atol=1e-12)
    # p_t: t-test of the linearization, here the influence of each user's weight on the
    # statistic, n dD/dw_i at w = 1, by finite differences
    def weighted(w):
        sums = [np.dot(w, x[keep]) for x in (a, b_num, den, den_b)]
        return f(sums[0] / sums[2]) - f(sums[1] / sums[3])

    ones, eps = np.ones(len(keep)), 1e-6
    influence = np.array([(weighted(ones + eps * e) - weighted(ones - eps * e)) / (2 * eps)
                          for e in np.eye(len(keep))]) * len(keep)
    if transform == "identity" or min(a[keep].sum(), b_num[keep].sum()) > 0:
        linearized = value + influence
        if np.ptp(linearized) > 1e-6 * (1 + np.abs(linearized).max()):
            expected = scipy.stats.ttest_1samp(linearized, 0.0).pvalue
            assert cmp.p_t == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_ratio_with_equal_counts_is_the_old_per_user_share() -> None:
    """Every user with c events: R = mean over users of num / c, with the very same resamples as
    `mean_interval` of those shares (the fixed-denominator per-user values, U / N * sum)."""
    rng = np.random.default_rng(11)
    c, n = 4, 500
    num_a, num_b = rng.gamma(2.0, 1.0, n) * c, rng.gamma(2.2, 1.0, n) * c
    den = np.full(n, float(c))
    share_a, share_b = num_a * n / den.sum(), num_b * n / den.sum()
    for method in ("percentile", "bca"):
        new = ratio_interval(num_a, den, method, n_resamples=2000, seed=5)
        old = mean_interval(share_a, method, n_resamples=2000, seed=5)
        assert new.value == pytest.approx(old.value, rel=1e-14)
        np.testing.assert_allclose([new.low, new.high], [old.low, old.high], rtol=1e-12)
    new_cmp = paired_ratio_difference(num_a, num_b, den, n_resamples=2000, seed=5)
    old_cmp = paired_difference(share_a, share_b, "percentile", n_resamples=2000, seed=5)
    assert new_cmp.difference.value == pytest.approx(old_cmp.difference.value, rel=1e-13)
    np.testing.assert_allclose([new_cmp.difference.low, new_cmp.difference.high],
                               [old_cmp.difference.low, old_cmp.difference.high], rtol=1e-10)
    assert new_cmp.p_t == pytest.approx(old_cmp.p_t, rel=1e-10)
    # RMSE: the value is sqrt of the old mean share, the p-value the old linearization's t-test
    rmse = paired_ratio_difference(num_a, num_b, den, transform="sqrt", n_resamples=500)

    def linearized(share):
        root = np.sqrt(share.mean())
        return root + (share - share.mean()) / (2 * root)

    assert rmse.difference.value == pytest.approx(
        np.sqrt(share_a.mean()) - np.sqrt(share_b.mean()), rel=1e-13)
    assert rmse.p_t == pytest.approx(
        scipy.stats.ttest_rel(linearized(share_a), linearized(share_b)).pvalue, rel=1e-10)


def test_ratio_with_unequal_counts_is_the_event_level_mean() -> None:
    rng = np.random.default_rng(12)
    counts = rng.integers(1, 30, 300)  # 1 to 29 held-out events per user
    users = np.repeat(np.arange(300), counts)
    squared = rng.gamma(1.0, 1.0, users.size) * (1 + users % 3)  # users differ in error
    num = np.bincount(users, weights=squared)
    den = np.bincount(users).astype(float)
    assert ratio_interval(num, den).value == pytest.approx(squared.mean(), rel=1e-13)
    rmse = ratio_interval(num, den, transform="sqrt", n_resamples=500)
    assert rmse.value == pytest.approx(np.sqrt(squared.mean()), rel=1e-13)
    assert rmse.low < rmse.value < rmse.high
    # the old per-user share with a fixed denominator, U / N * sum, has a different mean
    assert abs((num * 300 / den.sum()).mean() - squared.mean()) < 1e-9  # same point estimate...
    share = num / den  # ...but a user-weighted mean of rates would not be the event-level mean
    assert abs(share.mean() - squared.mean()) > 1e-3


def test_ratio_intervals_agree_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(13)
    den = rng.integers(1, 20, 300).astype(float)
    num = rng.exponential(1.0, 300) * den * (1 + (den > 10))  # heavier users err more

    def ratio(x, y, axis=-1):
        return x.sum(axis) / y.sum(axis)

    for method in ("percentile", "bca"):
        ours = ratio_interval(num, den, method, n_resamples=20_000, seed=3)
        ref = scipy.stats.bootstrap((num, den), ratio, paired=True, vectorized=True,
                                    n_resamples=20_000, method=method,
                                    random_state=4).confidence_interval
        width = ref.high - ref.low
        assert abs(ours.low - ref.low) < 0.04 * width
        assert abs(ours.high - ref.high) < 0.04 * width


def test_ratio_coverage_with_unequal_counts() -> None:
    """The ratio's 95% interval covers the event-level mean about 95% of the time when users
    have unequal numbers of events, more errors per event for users with more events."""
    rng = np.random.default_rng(14)
    covered, n_samples = 0, 600
    for i in range(n_samples):
        den = rng.geometric(0.15, 200).astype(float)
        rate = np.where(den > 8, 2.0, 1.0)  # the true event-level mean is E[den rate] / E[den]
        num = rng.gamma(den, rate)
        truth = (2.0 * (1 - 0.15) ** 8 * (8 + 1 / 0.15) + 1.0 * (1 / 0.15 - (1 - 0.15) ** 8
                 * (8 + 1 / 0.15))) * 0.15
        fig = ratio_interval(num, den, n_resamples=1000, seed=i)
        covered += fig.low <= truth <= fig.high
    assert 0.93 <= covered / n_samples <= 0.97, covered / n_samples


def test_ratio_refusals_and_tiny_inputs() -> None:
    tiny = ratio_interval([1.0, 3.0], [1.0, 1.0], n_resamples=50)
    assert tiny.value == 2.0 and 1.0 <= tiny.low <= tiny.high <= 3.0
    # users with no event are left out; their numerator must be 0
    assert ratio_interval([1.0, 0.0, 3.0], [1.0, 0.0, 1.0], n_resamples=50) == tiny
    same = ratio_interval([2.0, 4.0], [1.0, 2.0])
    assert (same.value, same.low, same.high) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="zero denominator"):
        ratio_interval([1.0, 2.0, 1.0], [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="at least 2 users"):
        ratio_interval([1.0, 0.0], [2.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        ratio_interval([1.0, 2.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="method must be one of"):
        ratio_interval([1.0, 2.0], [1.0, 1.0], method="t")
    with pytest.raises(ValueError, match="sqrt"):
        ratio_interval([-1.0, 2.0], [1.0, 1.0], transform="sqrt")
    with pytest.raises(ValueError, match="same users"):
        paired_ratio_difference([1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 1.0])
    zero = paired_ratio_difference([1.0, 2.0], [1.0, 2.0], [1.0, 2.0])
    assert zero.as_dict() == {"difference": {"value": 0.0, "low": 0.0, "high": 0.0},
                              "p_t": 1.0, "n": 2, "spread": 0.0}
    # with equal denominators the spread is that of the per-user differences (a - b) / c
    a, b = np.array([1.0, 4.0, 2.0, 7.0]), np.array([2.0, 1.0, 2.0, 3.0])
    spread = paired_ratio_difference(a, b, np.full(4, 2.0), n_resamples=50).spread
    assert spread == pytest.approx(np.std((a - b) / 2.0, ddof=1))


def test_grouped_bootstrap_resamples_whole_groups_deterministically() -> None:
    rng = np.random.default_rng(15)
    groups = np.repeat(np.array([7, 3, 9, 5, 1]), [3, 1, 4, 2, 2])  # labels in any order
    values = rng.normal(size=groups.size)
    fig = grouped_bootstrap(np.mean, groups, values, n_resamples=300, seed=4)
    again = grouped_bootstrap(np.mean, groups, values, n_resamples=300, seed=4)
    assert fig == again and fig.value == pytest.approx(values.mean())
    # reference: the same draws, each resample the concatenated rows of the drawn groups
    labels = np.unique(groups)
    draws = np.random.default_rng(4)
    means = []
    for _ in range(300):
        drawn = draws.integers(0, len(labels), size=len(labels))
        means.append(np.mean(np.concatenate([values[groups == labels[g]] for g in drawn])))
    np.testing.assert_allclose([fig.low, fig.high], np.quantile(means, [0.025, 0.975]),
                               rtol=1e-12)
    assert grouped_bootstrap(np.mean, groups, values, n_resamples=300, seed=5) != fig


@given(st.integers(1, 12), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_weighted_grouped_bootstrap_is_the_gathered_one_without_the_copy(
    n_groups: int, seed: int
) -> None:
    # a ratio of weighted sums (as the audit's ECE): each row counted as often as its group was
    # drawn gives the resample the gathered rows give, draw for draw
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(n_groups) * 3 + 1, rng.integers(1, 4, n_groups)))
    gaps = rng.normal(size=(groups.size, 3))
    events = rng.integers(1, 4, groups.size).astype(np.float64)

    def gathered(gap: np.ndarray, n: np.ndarray) -> float:
        return float(np.abs(gap.sum(0)).sum() / n.sum())

    def weighted(gap: np.ndarray, n: np.ndarray, weights: np.ndarray) -> float:
        return float(np.abs(weights @ gap).sum() / (weights @ n))

    a = grouped_bootstrap(gathered, groups, gaps, events, n_resamples=200, seed=seed)
    b = grouped_bootstrap(weighted, groups, gaps, events, n_resamples=200, seed=seed,
                          weighted=True)
    np.testing.assert_allclose([b.value, b.low, b.high], [a.value, a.low, a.high], rtol=1e-12,
                               atol=1e-15)


def test_spearman_interval_and_its_unavailable_cases() -> None:
    rng = np.random.default_rng(16)
    users = np.repeat(np.arange(60), 5)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    fig = spearman_interval(x, y, users, n_resamples=200, seed=1)
    assert fig.value == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert fig.low < fig.value < fig.high and fig.method == "percentile"
    assert not spearman_interval(np.ones(300), y, users).available
    # one user holds all the variation of x: most resamples leave x constant
    lone = np.where(users == 0, x, 0.0)
    rare = spearman_interval(lone, y, users, n_resamples=20, seed=0, min_resamples=15)
    assert not rare.available and "resamples" in rare.reason
