"""numba kernels behind `evaluators.metrics` and `evaluators.intervals`.

numba is used because the metrics are one pass over a [users, items] score matrix: a compiled loop
reads each score once and keeps two integer counters per target, which numpy can only do by
materialising boolean temporaries of the matrix's size (several passes over memory). Parallel loops
run over users (metrics) or resamples (bootstrap); every per-user / per-resample result is computed
sequentially by one thread, so results do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Tie modes, as integers for the kernels.
EXPECTED, OPTIMISTIC, PESSIMISTIC = 0, 1, 2


# users per parallel task: each task owns one scratch mask row, reused across its users
_USERS_PER_TASK = 64


@njit(cache=True, inline="always")
def _mark(exclude, u, extra, lo, hi, mark, value):  # pragma: no cover
    """Set mark[item - lo] = value for the user's excluded items inside [lo, hi)."""
    for x in range(exclude.shape[1]):
        item = exclude[u, x]
        if item >= lo and item < hi:
            mark[item - lo] = value
    if extra >= lo and extra < hi:
        mark[extra - lo] = value


@njit(cache=True, inline="always")
def _count_user_single(row, s_t, mark):  # pragma: no cover
    """(greater, equal, nan) counts of one user's row against its target score s_t.

    Excluded items are flagged in `mark` (a byte per column) rather than skipped, so the loop
    has no branches and vectorises.
    """
    n_greater = 0
    n_equal = 0
    n_nan = 0
    for j in range(row.shape[0]):
        s = row[j]
        keep = 1 - np.int64(mark[j])
        n_greater += (s > s_t) * keep
        n_equal += (s == s_t) * keep
        n_nan += s != s
    return n_greater, n_equal, n_nan


@njit(cache=True, inline="always")
def _single_users(block, lo, target, target_score, exclude, extra, greater, equal, nans,
                  flagged, u_lo, u_hi, mark):  # pragma: no cover
    hi = lo + block.shape[1]
    for u in range(u_lo, u_hi):
        _mark(exclude, u, extra, lo, hi, mark, 1)
        t = target[u, 0]
        if t >= lo and t < hi and mark[t - lo]:
            flagged[u] = 1  # the target is excluded: an error, reported by the caller
        g, e, n = _count_user_single(block[u], target_score[u], mark)
        _mark(exclude, u, extra, lo, hi, mark, 0)
        greater[u] += g
        equal[u] += e
        nans[u] += n


@njit(cache=True, inline="always")
def _multi_users(block, lo, targets, target_scores, n_targets, exclude, extra, greater, equal,
                 nans, flagged, u_lo, u_hi, mark):  # pragma: no cover
    hi = lo + block.shape[1]
    for u in range(u_lo, u_hi):
        _mark(exclude, u, extra, lo, hi, mark, 1)
        row = block[u]
        n = 0
        for i in range(n_targets[u]):
            t = targets[u, i]
            if t >= lo and t < hi and mark[t - lo]:
                flagged[u] = 1
            g, e, n = _count_user_single(row, target_scores[u, i], mark)
            greater[u, i] += g
            equal[u, i] += e
        _mark(exclude, u, extra, lo, hi, mark, 0)
        nans[u] += n


# Two builds of each driver: parallel over tasks of _USERS_PER_TASK users for large blocks, and
# serial, because a parallel launch costs tens of microseconds to milliseconds of thread
# wake-up, more than small blocks take. Separate functions so numba caches each.
@njit(parallel=True, cache=True, nogil=True)
def _count_single_parallel(block, lo, target, target_score, exclude, extra, greater, equal,
                           nans, flagged):  # pragma: no cover
    n_users = block.shape[0]
    n_tasks = (n_users + _USERS_PER_TASK - 1) // _USERS_PER_TASK
    for task in prange(n_tasks):
        mark = np.zeros(block.shape[1], dtype=np.uint8)
        _single_users(block, lo, target, target_score, exclude, extra, greater, equal, nans,
                      flagged, task * _USERS_PER_TASK,
                      min((task + 1) * _USERS_PER_TASK, n_users), mark)


@njit(cache=True, nogil=True)
def _count_single_serial(block, lo, target, target_score, exclude, extra, greater, equal,
                         nans, flagged):  # pragma: no cover
    mark = np.zeros(block.shape[1], dtype=np.uint8)
    _single_users(block, lo, target, target_score, exclude, extra, greater, equal, nans,
                  flagged, 0, block.shape[0], mark)


@njit(parallel=True, cache=True, nogil=True)
def _count_multi_parallel(block, lo, targets, target_scores, n_targets, exclude, extra, greater,
                          equal, nans, flagged):  # pragma: no cover
    n_users = block.shape[0]
    n_tasks = (n_users + _USERS_PER_TASK - 1) // _USERS_PER_TASK
    for task in prange(n_tasks):
        mark = np.zeros(block.shape[1], dtype=np.uint8)
        _multi_users(block, lo, targets, target_scores, n_targets, exclude, extra, greater,
                     equal, nans, flagged, task * _USERS_PER_TASK,
                     min((task + 1) * _USERS_PER_TASK, n_users), mark)


@njit(cache=True, nogil=True)
def _count_multi_serial(block, lo, targets, target_scores, n_targets, exclude, extra, greater,
                        equal, nans, flagged):  # pragma: no cover
    mark = np.zeros(block.shape[1], dtype=np.uint8)
    _multi_users(block, lo, targets, target_scores, n_targets, exclude, extra, greater, equal,
                 nans, flagged, 0, block.shape[0], mark)


# Threads only for very large blocks. On the 2 shared cores this was built on (load ~4.4), the
# parallel build took 12 ms on 6040 x 3706 scores against 9 ms serial: the OpenMP workers are
# split statically and wait for a descheduled sibling. Serially the pass already runs near
# memory bandwidth; threads help only where a block is big enough to amortise that risk.
PARALLEL_MIN_CELLS = 1 << 26


def count_single(block, lo, target, target_score, exclude, extra, greater, equal, nans,
                 flagged) -> None:
    """Accumulate, per user, how many candidate scores in `block` are > and == the target's.

    block: [U, W] scores of items lo..lo+W-1. target: [U, 1] item; target_score: [U].
    exclude: [U, L] item indices, padding < 0, duplicates allowed; `extra` is one more excluded
    item for everyone (-1: none). flagged[u] is set when the user's target is excluded.
    Runs in parallel for blocks of at least PARALLEL_MIN_CELLS cells.
    """
    kernel = _count_single_parallel if block.size >= PARALLEL_MIN_CELLS else _count_single_serial
    kernel(block, lo, target, target_score, exclude, extra, greater, equal, nans, flagged)


def count_multi(block, lo, targets, target_scores, n_targets, exclude, extra, greater, equal,
                nans, flagged) -> None:
    """`count_single` for target sets: targets / target_scores [U, T], first n_targets[u] valid."""
    kernel = _count_multi_parallel if block.size >= PARALLEL_MIN_CELLS else _count_multi_serial
    kernel(block, lo, targets, target_scores, n_targets, exclude, extra, greater, equal, nans,
           flagged)


@njit(cache=True, nogil=True)
def finalize(
    greater, equal, target_scores, gains, n_targets, ks, ties, cum_discount
):  # pragma: no cover
    """Per-user NDCG@k, HR@k (rows of [len(ks), U]) and MRR [U] from the counts.

    A target with g greater and e equal other candidates sits in a tie block of m = e + 1 items
    at ranks g+1..g+m. Under uniformly random tie-breaking its rank is uniform on that block, so its
    expected discount is (D[min(g+m, k)] - D[min(g, k)]) / m with D the cumulative discounts.
    HR and MRR depend only on the best-scored block holding r targets: the first target's
    position in it is the minimum of r positions drawn without replacement from m.
    Optimistic puts targets first in their block (largest gain first); pessimistic last
    (largest gain last).
    """
    n_users = greater.shape[0]
    n_k = ks.shape[0]
    ndcg = np.zeros((n_k, n_users))
    hr = np.zeros((n_k, n_users))
    mrr = np.zeros(n_users)
    for u in range(n_users):
        nt = n_targets[u]
        # ideal DCG: gains sorted descending at ranks 1..
        sorted_gains = np.sort(gains[u, :nt])[::-1]
        # the best-scored block: ties with the highest target score
        best = target_scores[u, 0]
        for i in range(1, nt):
            if target_scores[u, i] > best:
                best = target_scores[u, i]
        r = 0
        g_best = 0
        m_best = 0
        for i in range(nt):
            if target_scores[u, i] == best:
                r += 1
                g_best = greater[u, i]
                m_best = equal[u, i] + 1
        for ik in range(n_k):
            k = ks[ik]
            ideal = 0.0
            for q in range(min(k, nt)):
                ideal += sorted_gains[q] * (cum_discount[q + 1] - cum_discount[q])
            dcg = 0.0
            for i in range(nt):
                g = greater[u, i]
                m = equal[u, i] + 1
                if ties == EXPECTED:
                    dcg += gains[u, i] * (
                        cum_discount[min(g + m, k)] - cum_discount[min(g, k)]
                    ) / m
                else:
                    # targets tied with i that go before it: larger gain, or equal gain and
                    # smaller slot (a fixed order among equal gains; DCG does not depend on it)
                    ahead = 0
                    for j in range(nt):
                        if j != i and target_scores[u, j] == target_scores[u, i]:
                            if gains[u, j] > gains[u, i] or (
                                gains[u, j] == gains[u, i] and j < i
                            ):
                                ahead += 1
                    rank = g + 1 + ahead if ties == OPTIMISTIC else g + m - ahead
                    if rank <= k:
                        dcg += gains[u, i] * (cum_discount[rank] - cum_discount[rank - 1])
            ndcg[ik, u] = dcg / ideal
            if g_best < k:
                if ties == EXPECTED:
                    # P(no target among the first c positions of the best block)
                    c = min(k - g_best, m_best)
                    miss = 1.0
                    for q in range(c):
                        miss *= (m_best - r - q) / (m_best - q)
                        if miss <= 0.0:
                            miss = 0.0
                            break
                    hr[ik, u] = 1.0 - miss
                elif ties == OPTIMISTIC:
                    hr[ik, u] = 1.0
                elif g_best + m_best - r + 1 <= k:
                    hr[ik, u] = 1.0
        if ties == EXPECTED:
            # first target's position X in the block: P(X=1) = r/m,
            # P(X=j+1)/P(X=j) = (m-j-r+1)/(m-j)
            p = r / m_best
            total = 0.0
            for j in range(1, m_best - r + 2):
                total += p / (g_best + j)
                p *= (m_best - j - r + 1) / (m_best - j) if m_best > j else 0.0
            mrr[u] = total
        elif ties == OPTIMISTIC:
            mrr[u] = 1.0 / (g_best + 1)
        else:
            mrr[u] = 1.0 / (g_best + m_best - r + 1)
    return ndcg, hr, mrr


@njit(cache=True, inline="always")
def _splitmix64(state):  # pragma: no cover
    """One step of splitmix64 (Steele et al. 2014): returns (new state, 64 random bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _resample_mean(values, seed, b, threshold):  # pragma: no cover
    """Mean of resample b: n indices from its own splitmix64 stream seeded by (seed, b).

    Each 64-bit output gives two 32-bit words; an index is (word * n) >> 32, rejecting words
    whose low product falls below 2**32 mod n, which makes every index exactly equally likely
    (Lemire 2019, "Fast random integer generation in an interval"). n < 2**32.
    """
    n = values.shape[0]
    n64 = np.uint64(n)
    mask = np.uint64(0xFFFFFFFF)
    state = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(b)
    total = 0.0
    drawn = 0
    while drawn < n:
        state, x = _splitmix64(state)
        p = (x & mask) * n64
        if (p & mask) >= threshold:
            total += values[np.int64(p >> np.uint64(32))]
            drawn += 1
            if drawn == n:
                break
        p = (x >> np.uint64(32)) * n64
        if (p & mask) >= threshold:
            total += values[np.int64(p >> np.uint64(32))]
            drawn += 1
    return total / n


@njit(cache=True, inline="always")
def _sign_flip_mean(abs_values, seed, b):  # pragma: no cover
    """Mean of abs_values with independent random signs from resample b's own stream."""
    state = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(b)
    total = 0.0
    bits = np.uint64(0)
    for i in range(abs_values.shape[0]):
        if i % 64 == 0:
            state, bits = _splitmix64(state)
        if bits & np.uint64(1):
            total += abs_values[i]
        else:
            total -= abs_values[i]
        bits = bits >> np.uint64(1)
    return total / abs_values.shape[0]


@njit(parallel=True, cache=True, nogil=True)
def _bootstrap_parallel(values, n_resamples, seed):  # pragma: no cover
    out = np.empty(n_resamples)
    threshold = (np.uint64(1) << np.uint64(32)) % np.uint64(values.shape[0])
    for b in prange(n_resamples):
        out[b] = _resample_mean(values, seed, b, threshold)
    return out


@njit(cache=True, nogil=True)
def _bootstrap_serial(values, n_resamples, seed):  # pragma: no cover
    out = np.empty(n_resamples)
    threshold = (np.uint64(1) << np.uint64(32)) % np.uint64(values.shape[0])
    for b in range(n_resamples):
        out[b] = _resample_mean(values, seed, b, threshold)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _sign_flip_parallel(abs_values, n_resamples, seed):  # pragma: no cover
    out = np.empty(n_resamples)
    for b in prange(n_resamples):
        out[b] = _sign_flip_mean(abs_values, seed, b)
    return out


@njit(cache=True, nogil=True)
def _sign_flip_serial(abs_values, n_resamples, seed):  # pragma: no cover
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        out[b] = _sign_flip_mean(abs_values, seed, b)
    return out


# As for counting (PARALLEL_MIN_CELLS): on shared cores the static OpenMP split made 10,000 x
# 6040 draws slower in parallel (100-150 ms) than serially (70-90 ms), so threads start only
# where a single thread would take seconds.
PARALLEL_MIN_DRAWS = 1 << 28


def bootstrap_means(values, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement, size n) of float64 `values`.

    Resample b uses its own stream, so results do not depend on the thread count.
    """
    big = values.shape[0] * n_resamples >= PARALLEL_MIN_DRAWS
    return (_bootstrap_parallel if big else _bootstrap_serial)(values, n_resamples, seed)


def sign_flip_means(abs_values, n_resamples: int, seed: int) -> np.ndarray:
    """Means of abs_values under independent random signs, one stream per resample."""
    big = abs_values.shape[0] * n_resamples >= PARALLEL_MIN_DRAWS
    return (_sign_flip_parallel if big else _sign_flip_serial)(abs_values, n_resamples, seed)
