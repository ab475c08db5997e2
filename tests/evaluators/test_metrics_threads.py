"""The counting pass gives the same numbers whatever thread count or slicing runs it."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators import _kernels, metric_names, ranking_metrics, ranking_metrics_chunked, reference
from evaluators import strategies as ev_strategies
from evaluators.strategies import RankingCase

KS = (1, 3, 10)


class _Forced(_kernels.ThreadChooser):
    """Every slice (of `slice_cells` scores) on `n` threads, however small the call."""

    def __init__(self, n: int, slice_cells: int):
        super().__init__(slice_cells=slice_cells, min_cells=0)
        self.n = n

    def pick(self) -> int:
        return self.n

    def best(self) -> int:
        return self.n


def _stack(out: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([out[name] for name in metric_names(KS)])


def _with(monkeypatch: pytest.MonkeyPatch, n: int, slice_cells: int, fn):
    monkeypatch.setattr(_kernels, "THREADS", _Forced(n, slice_cells))
    try:
        return fn()
    finally:
        monkeypatch.undo()


def _tied_case(seed: int, n_users: int, n_items: int, n_targets: int):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (n_users, n_items)).astype(np.float32)
    targets = np.stack([rng.choice(n_items, n_targets, replace=False) for _ in range(n_users)])
    # duplicates, negatives anywhere (not only as trailing padding), lists of every length
    exclude = rng.integers(-2, n_items, (n_users, 40))
    for t in range(n_targets):
        exclude[exclude == targets[:, t : t + 1]] = -1
    return scores, targets if n_targets > 1 else targets[:, 0], exclude


@pytest.mark.parametrize("n_targets", [1, 3])
@pytest.mark.parametrize("ties", ["expected", "optimistic", "pessimistic"])
def test_serial_and_parallel_counts_are_identical(
    monkeypatch: pytest.MonkeyPatch, n_targets: int, ties: str
) -> None:
    # 700 users: the per-task stamps wrap around (255) inside one call
    scores, targets, exclude = _tied_case(n_targets, 700, 97, n_targets)
    top = numba.config.NUMBA_NUM_THREADS
    runs = [
        _with(monkeypatch, n, cells,
              lambda: ranking_metrics(scores, targets, KS, exclude, ties, padding_column=5
                                      if not np.any(targets == 5) else None))
        for n, cells in [(1, 1 << 30), (1, 97 * 13), (max(top, 2), 97 * 50), (max(top, 2), 1)]
    ]
    for other in runs[1:]:
        np.testing.assert_array_equal(_stack(other), _stack(runs[0]))


def test_chunked_blocks_in_parallel_equal_the_dense_serial_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scores, targets, exclude = _tied_case(9, 300, 130, 2)
    dense = _with(monkeypatch, 1, 1 << 30, lambda: ranking_metrics(scores, targets, KS, exclude))

    def block(u_lo: int, u_hi: int, i_lo: int, i_hi: int) -> np.ndarray:
        return scores[u_lo:u_hi, i_lo:i_hi]

    ts = np.take_along_axis(scores, targets, axis=1)
    chunked = _with(monkeypatch, 2, 130, lambda: ranking_metrics_chunked(
        block, 300, 130, targets, ts, KS, exclude, chunk_size=31, user_chunk_size=77))
    np.testing.assert_array_equal(_stack(chunked), _stack(dense))


def test_the_chooser_measures_each_count_and_keeps_the_fastest() -> None:
    chooser = _kernels.ThreadChooser(slice_cells=100, min_cells=0, explore_every=4)
    chooser.candidates = lambda: [1, 2]  # type: ignore[method-assign]
    seconds = {1: 1.0, 2: 3.0}  # two threads three times slower, as on a busy machine
    picks = []
    for _ in range(200):
        n = chooser.pick()
        picks.append(n)
        chooser.record(n, seconds[n] * 100, 100)
    assert picks[:4] == [1, 1, 2, 2]  # each count: a warm-up, then a measurement
    assert chooser.best() == 1
    later = picks[50:]
    assert later.count(1) > 0.9 * len(later) and 2 in later  # re-measured, rarely


def test_out_of_range_exclusions_are_refused_after_the_pass() -> None:
    with pytest.raises(ValueError, match="exclude row 1 names item 9, not in"):
        ranking_metrics(np.zeros((3, 4)), [0, 1, 2], exclude=np.array([[1, -1], [-1, 9],
                                                                      [3, 3]]))
    with pytest.raises(ValueError, match="exclude row 0 names item 4"):
        ranking_metrics(np.zeros((1, 4)), [0], exclude=np.array([[4]], dtype=np.int32))


@st.composite
def _cases_with_index_lists(draw: st.DrawFn) -> tuple[RankingCase, np.ndarray]:
    """A case and its exclusions as int [U, L] with duplicates and padding anywhere."""
    case = draw(ev_strategies.ranking_cases(max_users=6, max_items=9, multi_target=None))
    rows = []
    for row in case.exclude:
        items = [int(i) for i in np.flatnonzero(row)]
        listed = items + draw(st.lists(st.sampled_from(items), max_size=4)) if items else []
        listed += [-1] * draw(st.integers(0, 3))
        rows.append(draw(st.permutations(listed)) if listed else [])
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), -7, dtype=np.int64)
    for u, r in enumerate(rows):
        out[u, : len(r)] = r
    return case, out


@settings(settings.get_profile("evaluators"), max_examples=400)
@given(_cases_with_index_lists(), st.sampled_from([1, 2]), st.integers(1, 20))
def test_index_lists_with_duplicates_match_reference_on_any_threads(
    data: tuple[RankingCase, np.ndarray], n_threads: int, slice_cells: int
) -> None:
    case, exclude = data
    saved = _kernels.THREADS
    _kernels.THREADS = _Forced(n_threads, slice_cells)
    try:
        for ties in ("expected", "pessimistic"):
            ours = ranking_metrics(case.scores, case.targets, KS, exclude, ties,
                                   relevance=case.relevance)
            ref = reference.ranking_metrics(case.scores, case.targets, KS, case.exclude, ties,
                                            relevance=case.relevance)
            got = np.array([ours[k] for k in ref])
            want = np.array([ref[k] for k in ref])
            assert np.abs(got - want).max() <= 1e-12
    finally:
        _kernels.THREADS = saved


def test_infinities_are_counted_and_only_nans_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    # +inf and -inf in one row make the row's sum NaN, the kernel's cue to count NaNs again:
    # the recount must find none, and the counts must equal the reference's
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(40, 30)).astype(np.float32)
    scores[:, 3] = np.inf
    scores[::2, 7] = -np.inf
    scores[5, :] = -np.inf  # a whole row of -inf: every candidate ties with the target
    targets = rng.integers(8, 30, 40)
    exclude = rng.integers(-1, 30, (40, 6))
    exclude[exclude == targets[:, None]] = -1
    want = reference.ranking_metrics(scores, targets, KS, exclude)
    for n in (1, 2):
        out = _with(monkeypatch, n, 90, lambda: ranking_metrics(scores, targets, KS, exclude))
        for name in metric_names(KS):
            np.testing.assert_allclose(out[name], want[name], rtol=0, atol=1e-12, err_msg=name)
    bad = scores.copy()
    bad[9, 11] = np.nan  # a NaN in an excluded cell is still an error
    with pytest.raises(ValueError, match="NaN: row 9, column 11"):
        ranking_metrics(bad, np.full(40, 12), KS, np.full((40, 1), 11))


def test_rows_wider_than_the_float32_counters_take_the_int64_path() -> None:
    # float32 counters are exact below 2**24 columns; a wider row is counted in int64
    width = 2**24 + 5
    scores = np.zeros((1, width), dtype=np.float32)
    scores[0, : 2**24 + 2] = 1.0  # 2**24 + 2 candidates above the target (not exact in f32)
    scores[0, -1] = 0.5  # the target
    scores[0, -2] = 0.5  # one tie
    nans = np.zeros(1, dtype=np.int64)
    flagged = np.zeros(1, dtype=np.int64)
    g = np.zeros(1, dtype=np.int64)
    e = np.zeros(1, dtype=np.int64)
    _kernels.count_single(scores, 0, width, np.array([[width - 1]]), np.array([0.5], np.float32),
                          np.array([[0, 0, -1]]), -1, g, e, nans, flagged, n_threads=1)
    assert int(g[0]) == 2**24 + 1  # column 0 excluded
    assert int(e[0]) == 2  # the target and its tie
    assert int(nans[0]) == 0 and int(flagged[0]) == 0
