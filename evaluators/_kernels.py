"""numba kernels behind `evaluators.metrics` and `evaluators.intervals`.

numba is used because the metrics are one pass over a [users, items] score matrix: a compiled loop
reads each score once and keeps two integer counters per target, which numpy can only do by
materialising boolean temporaries of the matrix's size (several passes over memory). Parallel loops
run over users (metrics) or resamples (bootstrap); every per-user / per-resample result is computed
sequentially by one thread, so results do not depend on the number of threads.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

# Tie modes, as integers for the kernels.
EXPECTED, OPTIMISTIC, PESSIMISTIC = 0, 1, 2


# Bits of `flagged[u]`: the user's target is excluded (or is the padding column); an excluded
# item lies at or beyond n_items (only reported where the caller passes the catalog size).
FLAG_TARGET_EXCLUDED, FLAG_EXCLUDE_OUT_OF_RANGE = 1, 2


# Reassociation (and no signed zeros), so that the compiler may vectorise the float32 count and
# sum reductions of `_row_counts`; not "nnan"/"ninf": NaN compares and sums keep their IEEE
# meaning, which the NaN check relies on.
_REASSOC = {"reassoc", "nsz"}


@njit(cache=True, inline="always", fastmath=_REASSOC)
def _row_counts(block, u, s_t):  # pragma: no cover
    """(greater, equal, nan) counts over the whole row u against the target score s_t.

    One pass, no branch: per score two compares and three adds, which vectorise. The counters
    are float32 -- exact below 2**24 in any order of addition, and a float32 vector holds twice
    as many of them as int64 -- for rows narrower than that. NaNs (a NaN anywhere, excluded
    cells included, is an error the caller reports) are found through the row's sum, which is
    NaN when any score is; only then is the row read again to count them (a sum can also be NaN
    from +inf and -inf: the recount is exact). The excluded items are taken out afterwards
    (`_subtract_excluded_single`), while the row is still in L1.
    """
    width = block.shape[1]
    if width < 2**24:
        greater = np.float32(0)
        equal = np.float32(0)
        total = np.float32(0)
        for j in range(width):
            s = block[u, j]
            greater += np.float32(s > s_t)
            equal += np.float32(s == s_t)
            total += s
        n_nan = 0
        if total != total:
            for j in range(width):
                n_nan += block[u, j] != block[u, j]
        return np.int64(greater), np.int64(equal), n_nan
    wide_greater = 0
    wide_equal = 0
    wide_nan = 0
    for j in range(width):
        s = block[u, j]
        wide_greater += s > s_t
        wide_equal += s == s_t
        wide_nan += s != s
    return wide_greater, wide_equal, wide_nan


@njit(cache=True, inline="always")
def _next_stamp(stamp, mark):  # pragma: no cover
    """The next user's stamp, 1..255; the marks are cleared when the stamps wrap around."""
    stamp += 1
    if stamp == 256:
        mark[:] = 0
        stamp = 1
    return stamp


@njit(cache=True, inline="always")
def _subtract_excluded_single(block, u, exclude, extra, lo, mark, st, s_t):  # pragma: no cover
    """(greater, equal) counts of user u's excluded items (its list and `extra`) against s_t,
    each item once, to take out of the whole row's counts, and the largest listed item at or
    beyond the block's end (-1: none).

    Read after the row pass, each excluded score is an L1 hit: this scalar loop over the list
    costs less than skipping marked columns inside the vectorised pass (which had to widen a
    byte mark per score), measured side by side (benchmarks/RESULTS.md). Locals, not the
    output arrays, hold the counts, so that they stay in registers.
    """
    width = block.shape[1]
    greater = 0
    equal = 0
    top = -1
    for x in range(exclude.shape[1]):
        j = exclude[u, x] - lo
        if j >= width:
            top = max(top, j + lo)
        elif j >= 0 and mark[j] != st:
            mark[j] = st
            s = block[u, j]
            greater += s > s_t
            equal += s == s_t
    j = extra - lo
    if j >= 0 and j < width and mark[j] != st:
        mark[j] = st
        s = block[u, j]
        greater += s > s_t
        equal += s == s_t
    return greater, equal, top


@njit(cache=True, inline="always")
def _subtract_excluded_multi(block, u, exclude, extra, lo, mark, st, target_scores, nt, greater,
                             equal):  # pragma: no cover
    """`_subtract_excluded_single` for nt targets, taken out of greater[u, :nt] / equal[u, :nt]
    in one walk over the list; returns the largest listed item at or beyond the block's end."""
    width = block.shape[1]
    top = -1
    for x in range(exclude.shape[1] + 1):
        listed = x < exclude.shape[1]
        j = (exclude[u, x] if listed else extra) - lo
        if j >= width:
            if listed:
                top = max(top, j + lo)
        elif j >= 0 and mark[j] != st:
            mark[j] = st
            s = block[u, j]
            for i in range(nt):
                greater[u, i] -= s > target_scores[u, i]
                equal[u, i] -= s == target_scores[u, i]
    return top


@njit(cache=True, inline="always")
def _single_users(block, lo, n_items, target, target_score, exclude, extra, greater, equal,
                  nans, flagged, u_lo, u_hi, mark):  # pragma: no cover
    """Counts for users u_lo..u_hi-1 against their one target each.

    The row is counted whole (`_row_counts`), then the user's excluded items -- stamped in
    `mark`, a byte per column and per task, so that each counts once -- are taken out
    (`_subtract_excluded_single`); the stamp changes from user to user, so the marks need no
    clearing.
    """
    width = block.shape[1]
    stamp = 0
    for u in range(u_lo, u_hi):
        stamp = _next_stamp(stamp, mark)
        st = np.uint8(stamp)
        s_t = target_score[u]
        g, e, n = _row_counts(block, u, s_t)
        g_out, e_out, top = _subtract_excluded_single(block, u, exclude, extra, lo, mark, st, s_t)
        greater[u] += g - g_out
        equal[u] += e - e_out
        nans[u] += n
        flagged[u] |= _flags(target[u, 0] - lo, width, mark, st, top, n_items)


@njit(cache=True, inline="always")
def _flags(t, width, mark, st, top, n_items):  # pragma: no cover
    flag = 0
    if top >= n_items:
        flag = FLAG_EXCLUDE_OUT_OF_RANGE
    if t >= 0 and t < width and mark[t] == st:
        flag |= FLAG_TARGET_EXCLUDED  # an error, reported by the caller
    return flag


@njit(cache=True, inline="always")
def _multi_users(block, lo, n_items, targets, target_scores, n_targets, exclude, extra, greater,
                 equal, nans, flagged, u_lo, u_hi, mark):  # pragma: no cover
    """`_single_users` for target sets: one row count per target, then the exclusions taken
    out of all of them in one walk over the list."""
    width = block.shape[1]
    stamp = 0
    for u in range(u_lo, u_hi):
        stamp = _next_stamp(stamp, mark)
        st = np.uint8(stamp)
        nt = n_targets[u]
        n = 0
        for i in range(nt):
            g, e, n = _row_counts(block, u, target_scores[u, i])
            greater[u, i] += g
            equal[u, i] += e
        nans[u] += n
        top = _subtract_excluded_multi(block, u, exclude, extra, lo, mark, st, target_scores, nt,
                                       greater, equal)
        flag = 0
        for i in range(nt):
            flag |= _flags(targets[u, i] - lo, width, mark, st, top, n_items)
        flagged[u] |= flag


# The counting drivers, one per target shape, over a user range [u_lo, u_hi) so that the
# dispatcher below can time slices of one call. The parallel build cuts the range into `parts`
# contiguous parts, one a thread, each with its own mark row (a `prange` over 16-user tasks ran
# no faster on 2 threads than on one, benchmarks/RESULTS.md). Each user is counted by one thread,
# start to end, so the counts do not depend on the thread count.
@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _count_single_serial(block, lo, n_items, target, target_score, exclude, extra, greater,
                         equal, nans, flagged, u_lo, u_hi):  # pragma: no cover
    mark = np.zeros(block.shape[1], dtype=np.uint8)
    _single_users(block, lo, n_items, target, target_score, exclude, extra, greater, equal, nans,
                  flagged, u_lo, u_hi, mark)


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOC)
def _count_single_parallel(block, lo, n_items, target, target_score, exclude, extra, greater,
                           equal, nans, flagged, u_lo, u_hi, parts):  # pragma: no cover
    for part in prange(parts):
        first = u_lo + (u_hi - u_lo) * part // parts
        last = u_lo + (u_hi - u_lo) * (part + 1) // parts
        mark = np.zeros(block.shape[1], dtype=np.uint8)
        _single_users(block, lo, n_items, target, target_score, exclude, extra, greater, equal,
                      nans, flagged, first, last, mark)


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _count_multi_serial(block, lo, n_items, targets, target_scores, n_targets, exclude, extra,
                        greater, equal, nans, flagged, u_lo, u_hi):  # pragma: no cover
    mark = np.zeros(block.shape[1], dtype=np.uint8)
    _multi_users(block, lo, n_items, targets, target_scores, n_targets, exclude, extra, greater,
                 equal, nans, flagged, u_lo, u_hi, mark)


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOC)
def _count_multi_parallel(block, lo, n_items, targets, target_scores, n_targets, exclude, extra,
                          greater, equal, nans, flagged, u_lo, u_hi, parts):  # pragma: no cover
    for part in prange(parts):
        first = u_lo + (u_hi - u_lo) * part // parts
        last = u_lo + (u_hi - u_lo) * (part + 1) // parts
        mark = np.zeros(block.shape[1], dtype=np.uint8)
        _multi_users(block, lo, n_items, targets, target_scores, n_targets, exclude, extra,
                     greater, equal, nans, flagged, first, last, mark)


class ThreadChooser:
    """Picks the thread count of the counting pass by timing it, slice by slice.

    A call's users are processed in slices of about `slice_cells` scores. Each slice runs with
    one candidate thread count (1, 2, 4, ... up to `numba.get_num_threads()`) and its time per
    score is recorded; a slice uses the count whose recent median is lowest, except that a count
    never measured is tried first (its first use is a warm-up and not recorded: it starts the
    thread pool), and a slower count is re-measured on a short slice every `explore_every` x
    (its time / the best's) slices, so the choice follows the machine as other work comes and
    goes while a far slower count costs little. Nothing is guessed from the load
    average. Which count runs a slice never changes a result (see the kernels above).

    Why measure: on a machine shared with other jobs a thread waits for a descheduled sibling,
    and two threads can take longer than one; on a free machine they take about half.
    """

    def __init__(self, slice_cells: int = 1 << 22, min_cells: int = 1 << 21,
                 explore_every: int = 8, window: int = 5):
        self.slice_cells = slice_cells
        self.min_cells = min_cells
        self.explore_every = explore_every
        self.window = window
        self.samples: dict[int, list[float]] = {}
        self.warm: set[int] = set()
        self.slices = 0
        self.last_tried: dict[int, int] = {}

    def candidates(self) -> list[int]:
        top = int(numba.get_num_threads())
        counts = [1]
        while counts[-1] * 2 < top:
            counts.append(counts[-1] * 2)
        if top > 1:
            counts.append(top)
        return counts

    def score(self, n_threads: int) -> float:
        kept = sorted(self.samples[n_threads])
        return kept[len(kept) // 2]

    def best(self) -> int:
        """The measured-fastest count so far (1 before any measurement)."""
        measured = [n for n in self.candidates() if n in self.samples]
        return min(measured, key=self.score) if measured else 1

    def pick(self) -> int:
        counts = self.candidates()
        for n in counts:
            if n not in self.samples:
                return n
        self.slices += 1
        best = min(counts, key=self.score)
        for n in counts:
            # re-measure a slower count every explore_every * (its time / the best's) slices:
            # often while it is close, rarely while it is far behind
            every = self.explore_every * max(1.0, min(self.score(n) / self.score(best), 64.0))
            if n != best and self.slices - self.last_tried.get(n, 0) >= every:
                self.last_tried[n] = self.slices
                return n
        return best

    def record(self, n_threads: int, seconds: float, cells: int) -> None:
        if n_threads not in self.warm:
            self.warm.add(n_threads)
            return
        kept = self.samples.setdefault(n_threads, [])
        kept.append(seconds / max(cells, 1))
        del kept[: -self.window]

    def run(self, serial, parallel, n_users: int, width: int, args: tuple,
            n_threads: int | None = None) -> None:
        """Run `serial(*args, u_lo, u_hi)` / `parallel(...)` over users 0..n_users.

        n_threads: force a count for the whole call (tests, benchmarks); None chooses.
        """
        if n_threads is not None or n_users * width < self.min_cells:
            n = 1 if n_threads is None else n_threads
            _run_with(serial, parallel, n, (*args, 0, n_users), split=True)
            return
        step = max(1, self.slice_cells // max(width, 1))
        u_lo = 0
        while u_lo < n_users:
            n = self.pick()
            # a re-measurement of a count that is not the current best gets an eighth of a
            # slice: exploring costs little even when that count is much slower
            size = step if n == self.best() or n not in self.samples else max(1, step // 8)
            u_hi = min(u_lo + size, n_users)
            start = time.perf_counter()
            _run_with(serial, parallel, n, (*args, u_lo, u_hi), split=True)
            self.record(n, time.perf_counter() - start, (u_hi - u_lo) * width)
            u_lo = u_hi


def _run_with(serial, parallel, n_threads: int, args: tuple, split: bool = False) -> None:
    """serial(*args) or, with n_threads > 1, parallel(*args) on that many numba threads; with
    `split`, parallel also takes the number of parts to cut its user range into (one a thread)."""
    if n_threads <= 1:
        serial(*args)
        return
    n_threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        parallel(*args, n_threads) if split else parallel(*args)
    finally:
        numba.set_num_threads(before)


# One chooser per process: its measurements carry over from call to call.
THREADS = ThreadChooser()


def count_single(block, lo, n_items, target, target_score, exclude, extra, greater, equal, nans,
                 flagged, n_threads=None) -> None:
    """Accumulate, per user, how many candidate scores in `block` are > and == the target's.

    block: [U, W] scores of items lo..lo+W-1. target: [U, 1] item; target_score: [U].
    exclude: [U, L] item indices, padding < 0, duplicates allowed; `extra` is one more excluded
    item for everyone (-1: none). flagged[u] gets FLAG_TARGET_EXCLUDED when the user's target is
    excluded and FLAG_EXCLUDE_OUT_OF_RANGE when an excluded item is >= n_items.
    nans[u] counts NaN scores in the row, excluded items included.
    Threads: chosen by `THREADS` (measured), or `n_threads` for the whole call.
    """
    THREADS.run(_count_single_serial, _count_single_parallel, block.shape[0], block.shape[1],
                (block, lo, n_items, target, target_score, exclude, extra, greater, equal, nans,
                 flagged), n_threads)


def count_multi(block, lo, n_items, targets, target_scores, n_targets, exclude, extra, greater,
                equal, nans, flagged, n_threads=None) -> None:
    """`count_single` for target sets: targets / target_scores [U, T], first n_targets[u] valid."""
    THREADS.run(_count_multi_serial, _count_multi_parallel, block.shape[0],
                block.shape[1] * max(targets.shape[1], 1),
                (block, lo, n_items, targets, target_scores, n_targets, exclude, extra, greater,
                 equal, nans, flagged), n_threads)


@njit(cache=True, nogil=True)
def _finalize_users(u_lo, u_hi, greater, equal, target_scores, gains, n_targets, ks, ties,
                    cum_discount, ndcg, hr, mrr, scratch):  # pragma: no cover
    """Metrics of users u_lo..u_hi-1 (see `finalize`); scratch: float64 [T], overwritten.

    One call per range, not per user: a numba call per user costs ~100 ns of argument and
    reference-count traffic, ten times the arithmetic of a user.
    """
    n_k = ks.shape[0]
    for u in range(u_lo, u_hi):
        if n_targets[u] == 1 and equal[u, 0] == 0:
            # one target, tied with nothing: rank g+1 in every tie mode. The same floating-point
            # operations as the general code below reduce to these (x + 0.0 = x, x / 1 = x, and
            # the HR and MRR loops run once), so the values are identical; only faster.
            g = greater[u, 0]
            w = gains[u, 0]
            ideal = w * (cum_discount[1] - cum_discount[0])
            for ik in range(n_k):
                k = ks[ik]
                ndcg[ik, u] = w * (cum_discount[min(g + 1, k)] - cum_discount[min(g, k)]) / ideal
                hr[ik, u] = 1.0 if g < k else 0.0
            mrr[u] = 1.0 / (g + 1)
            continue
        nt = n_targets[u]
        # ideal DCG: gains sorted descending at ranks 1..
        # (sorted ascending in place in a scratch row, read from its end)
        if nt == 1:
            scratch[0] = gains[u, 0]
        else:
            for i in range(nt):
                scratch[i] = gains[u, i]
            scratch[:nt].sort()
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
                ideal += scratch[nt - 1 - q] * (cum_discount[q + 1] - cum_discount[q])
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


@njit(cache=True, nogil=True)
def _finalize_serial(greater, equal, target_scores, gains, n_targets, ks, ties, cum_discount,
                     ndcg, hr, mrr):  # pragma: no cover
    scratch = np.empty(max(gains.shape[1], 1))
    _finalize_users(0, greater.shape[0], greater, equal, target_scores, gains, n_targets, ks,
                    ties, cum_discount, ndcg, hr, mrr, scratch)


@njit(parallel=True, cache=True, nogil=True)
def _finalize_parallel(greater, equal, target_scores, gains, n_targets, ks, ties, cum_discount,
                       ndcg, hr, mrr):  # pragma: no cover
    n_users = greater.shape[0]
    n_tasks = (n_users + 255) // 256
    for task in prange(n_tasks):
        scratch = np.empty(max(gains.shape[1], 1))
        _finalize_users(task * 256, min((task + 1) * 256, n_users), greater, equal,
                        target_scores, gains, n_targets, ks, ties, cum_discount, ndcg, hr, mrr,
                        scratch)


def finalize(greater, equal, target_scores, gains, n_targets, ks, ties, cum_discount,
             n_threads=None):
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
    ndcg = np.zeros((ks.shape[0], n_users))
    hr = np.zeros((ks.shape[0], n_users))
    mrr = np.zeros(n_users)
    if n_threads is None:  # the count the counting pass found fastest
        n_threads = THREADS.best() if n_users >= 8192 else 1
    _run_with(_finalize_serial, _finalize_parallel, n_threads,
              (greater, equal, target_scores, gains, n_targets, ks, ties, cum_discount, ndcg,
               hr, mrr))
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


# Unlike counting (timed by ThreadChooser), a fixed rule here: on shared cores the static
# OpenMP split made 10,000 x 6040 draws slower in parallel (100-150 ms) than serially
# (70-90 ms), so threads start only where a single thread would take seconds.
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
