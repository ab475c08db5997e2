"""Full-catalog ranking metrics with exact tie handling: NDCG@k, HR@k and MRR per user.

Every metric of a user follows from two counts per target item: how many candidate items score
strictly higher (g) and how many score the same (e, the target itself not counted). The target's
rank is then g+1 (optimistic), g+e+1 (pessimistic), or uniform on g+1..g+e+1 under random
tie-breaking (expected, the default): a constant scorer gets the chance value, never 1 or 0.
The counts take one pass over the scores (`evaluators._kernels`: the whole score row is counted,
then the user's excluded items, each once, are taken out while the row is still in cache), so
the cost is about that of reading the matrix and the exclusion lists once; there is no sort.
The pass runs on the thread count that measured fastest on this machine (see
`_kernels.ThreadChooser`); the results do not depend on it.

Conventions. Column index = item index. Candidates are all columns except the user's `exclude`d
items (typically the history) and `padding_column`. NDCG uses the gain of each target (1 for
plain targets) with discount 1/log2(rank+1) and the ideal DCG of the user's own targets at ranks
1..min(k, n_targets); HR@k is 1 when any target is in the top k; MRR is 1/rank of the best-ranked
target over the whole catalog (no cutoff).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from evaluators import _kernels

TIES = {"expected": _kernels.EXPECTED, "optimistic": _kernels.OPTIMISTIC,
        "pessimistic": _kernels.PESSIMISTIC}

__all__ = [
    "ranking_metrics",
    "ranking_metrics_chunked",
    "ranking_metrics_streaming",
    "metric_names",
]


def metric_names(ks: Iterable[int]) -> list[str]:
    """The keys `ranking_metrics` returns for these cutoffs, in order (no metric is computed:
    ndcg@k for each k, then hr@k for each k, then mrr)."""
    ks = list(ks)
    return [f"ndcg@{k}" for k in ks] + [f"hr@{k}" for k in ks] + ["mrr"]


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array or CPU torch tensor (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if not x.dtype.is_floating_point or x.dtype.itemsize >= 4:
            return x.numpy()
        return x.float().numpy()  # float16 / bfloat16: exact widening
    return np.asarray(x)


def _scores_array(scores: Any) -> np.ndarray:
    arr = _to_numpy(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_users, n_items], got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"scores must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr)


def _check_ks(ks: Iterable[int]) -> np.ndarray:
    ks_list = [int(k) for k in ks]
    if not ks_list:
        raise ValueError("ks must name at least one cutoff")
    for k in ks_list:
        if k < 1:
            raise ValueError(f"cutoffs k must be >= 1, got {k}")
    return np.asarray(ks_list, dtype=np.int64)


def _targets_arrays(
    targets: Any, relevance: Any, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(targets [U, T] padded with -1 and valid slots first, gains [U, T], n_targets [U], single).

    Accepts int [U] (one target each), int [U, T] padded with negatives (with optional
    `relevance` [U, T]), or a length-U sequence of item sequences or {item: gain} mappings.
    """
    if isinstance(targets, list | tuple) and any(
        isinstance(x, Mapping) or np.ndim(_to_numpy(x)) > 0 for x in targets
    ):
        rows: list[list[int]] = []
        row_gains: list[list[float]] = []
        for u, entry in enumerate(targets):
            if isinstance(entry, Mapping):
                rows.append([int(i) for i in entry])
                row_gains.append([float(v) for v in entry.values()])
            else:
                items = [int(i) for i in np.asarray(_to_numpy(entry)).reshape(-1)]
                rows.append(items)
                if relevance is None:
                    row_gains.append([1.0] * len(items))
                else:
                    rel_u = np.asarray(_to_numpy(relevance[u]), dtype=np.float64).reshape(-1)
                    if rel_u.shape[0] != len(items):
                        raise ValueError(
                            f"relevance row {u} has {rel_u.shape[0]} values for "
                            f"{len(items)} targets"
                        )
                    row_gains.append(rel_u.tolist())
        width = max((len(r) for r in rows), default=0)
        tgt = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
        gains = np.zeros(tgt.shape, dtype=np.float64)
        for u, (r, gr) in enumerate(zip(rows, row_gains, strict=True)):
            tgt[u, : len(r)] = r
            gains[u, : len(r)] = gr
        relevance = None
    else:
        arr = _to_numpy(targets)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"targets must be integer item indices, got dtype {arr.dtype}")
        if arr.ndim == 1:
            tgt = arr.astype(np.int64).reshape(-1, 1)
            gains = np.ones(tgt.shape, dtype=np.float64)
        elif arr.ndim == 2:
            tgt = arr.astype(np.int64)
            gains = np.where(tgt >= 0, 1.0, 0.0)
        else:
            raise ValueError(f"targets must be 1-D or 2-D, got shape {arr.shape}")
    if relevance is not None:
        rel = np.asarray(_to_numpy(relevance), dtype=np.float64)
        if rel.ndim == 1 and tgt.shape[1] == 1:
            rel = rel.reshape(-1, 1)  # one gain per single target
        if rel.shape != tgt.shape:
            raise ValueError(f"relevance shape {rel.shape} != targets shape {tgt.shape}")
        gains = np.where(tgt >= 0, rel, 0.0)
    if tgt.shape[0] != n_users:
        raise ValueError(f"targets has {tgt.shape[0]} rows but scores has {n_users} users")
    single = tgt.shape[1] == 1
    valid = tgt >= 0
    if single:
        bad = np.flatnonzero(~valid[:, 0] | (tgt[:, 0] >= n_items))
        if bad.size:
            u = int(bad[0])
            raise ValueError(
                f"target out of range at row {u}: item {int(tgt[u, 0])} not in [0, {n_items})"
            )
    else:
        too_big = np.argwhere(tgt >= n_items)
        if too_big.size:
            u, i = (int(v) for v in too_big[0])
            raise ValueError(
                f"target out of range at row {u}: item {int(tgt[u, i])} not in [0, {n_items})"
            )
        order = _valid_first(tgt)
        tgt = np.take_along_axis(tgt, order, axis=1)
        gains = np.take_along_axis(gains, order, axis=1)
        valid = tgt >= 0
    n_targets = valid.sum(axis=1).astype(np.int64)
    empty = np.flatnonzero(n_targets == 0)
    if empty.size:
        raise ValueError(f"row {int(empty[0])} has no target")
    bad_gain = np.argwhere(valid & ~(gains > 0))
    if bad_gain.size:
        u = int(bad_gain[0, 0])
        raise ValueError(f"relevance must be > 0 for every target, row {u} has {gains[u]}")
    if not single:
        srt = np.sort(np.where(valid, tgt, -1), axis=1)
        dup = np.argwhere((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))
        if dup.size:
            u = int(dup[0, 0])
            raise ValueError(f"row {u} lists target item {int(srt[u, dup[0, 1] + 1])} twice")
    return tgt, gains, n_targets, single


def _valid_first(targets: np.ndarray) -> np.ndarray:
    """The per-row order that puts valid target slots (>= 0) first, keeping their order."""
    return np.argsort(targets < 0, axis=1, kind="stable")


def _raise_exclude_out_of_range(excl: np.ndarray, n_items: int) -> None:
    u, x = (int(v) for v in np.argwhere(excl >= n_items)[0])
    raise ValueError(f"exclude row {u} names item {int(excl[u, x])}, not in [0, {n_items})")


def _exclude_array(
    exclude: Any, n_users: int, n_items: int, padding_column: int | None,
    check_range: bool = True,
) -> np.ndarray:
    """Exclusions as int32 or int64 [U, L], negatives = padding, duplicates allowed.

    check_range=False leaves the check that every item is < n_items to the counting kernel,
    which reads the exclusions anyway (the dense path: one pass less over them).
    """
    if exclude is None:
        excl = np.full((n_users, 0), -1, dtype=np.int64)
    elif isinstance(exclude, list | tuple):
        rows = [np.asarray(_to_numpy(r), dtype=np.int64).reshape(-1) for r in exclude]
        width = max((r.shape[0] for r in rows), default=0)
        excl = np.full((len(rows), width), -1, dtype=np.int64)
        for u, r in enumerate(rows):
            excl[u, : r.shape[0]] = r
    else:
        arr = _to_numpy(exclude)
        if arr.ndim != 2:
            raise ValueError(f"exclude must be 2-D (mask or padded indices), got {arr.shape}")
        if arr.dtype == np.bool_:
            if arr.shape != (n_users, n_items):
                raise ValueError(
                    f"exclude mask shape {arr.shape} != scores shape {(n_users, n_items)}"
                )
            counts = arr.sum(axis=1)
            excl = np.full((n_users, int(counts.max(initial=0))), -1, dtype=np.int64)
            rows_idx, cols = np.nonzero(arr)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            excl[rows_idx, np.arange(rows_idx.shape[0]) - starts[rows_idx]] = cols
        elif arr.dtype in (np.int32, np.int64):
            excl = arr  # as given: the kernels compile for both widths
        elif arr.dtype.kind in "iu":
            excl = arr.astype(np.int64)
        else:
            raise ValueError(f"exclude must be a bool mask or integer indices, got {arr.dtype}")
    if excl.shape[0] != n_users:
        raise ValueError(f"exclude has {excl.shape[0]} rows but scores has {n_users} users")
    if check_range and excl.size and excl.max() >= n_items:
        _raise_exclude_out_of_range(excl, n_items)
    if padding_column is not None and not 0 <= padding_column < n_items:
        raise ValueError(f"padding_column {padding_column} not in [0, {n_items})")
    return np.ascontiguousarray(excl)


class _Counter:
    """Accumulates the greater/equal counts block by block (the dense path is one block)."""

    def __init__(
        self, targets: np.ndarray, target_scores: np.ndarray, n_targets: np.ndarray,
        exclude: np.ndarray, padding_column: int | None, n_items: int,
    ):
        n_users, width = target_scores.shape
        self.n_items = n_items
        self.targets = targets
        self.padding_column = padding_column
        self.extra = -1 if padding_column is None else int(padding_column)
        self.flagged = np.zeros(n_users, dtype=np.int64)
        self.single = width == 1
        self.target_scores = target_scores
        self.n_targets = n_targets
        self.exclude = exclude
        self.greater = np.zeros((n_users, width), dtype=np.int64)
        self.equal = np.zeros((n_users, width), dtype=np.int64)
        self.nans = np.zeros(n_users, dtype=np.int64)

    def add(self, block: np.ndarray, lo: int, rows: slice = slice(None)) -> None:
        ts = self.target_scores[rows].astype(block.dtype, copy=False)
        excl = self.exclude[rows]
        n = np.zeros(block.shape[0], dtype=np.int64)
        f = np.zeros(block.shape[0], dtype=np.int64)
        if self.single:
            g = np.zeros(block.shape[0], dtype=np.int64)
            e = np.zeros(block.shape[0], dtype=np.int64)
            _kernels.count_single(block, lo, self.n_items, self.targets[rows],
                                  np.ascontiguousarray(ts[:, 0]), excl, self.extra, g, e, n, f)
            self.greater[rows, 0] += g
            self.equal[rows, 0] += e
        else:
            g = np.zeros(ts.shape, dtype=np.int64)
            e = np.zeros(ts.shape, dtype=np.int64)
            _kernels.count_multi(block, lo, self.n_items, self.targets[rows],
                                 np.ascontiguousarray(ts), self.n_targets[rows], excl,
                                 self.extra, g, e, n, f)
            self.greater[rows] += g
            self.equal[rows] += e
        self.nans[rows] += n
        self.flagged[rows] |= f

    def raise_on_excluded_target(self) -> None:
        out_of_range = np.flatnonzero(self.flagged & _kernels.FLAG_EXCLUDE_OUT_OF_RANGE)
        if out_of_range.size:
            _raise_exclude_out_of_range(self.exclude, self.n_items)
        bad = np.flatnonzero(self.flagged & _kernels.FLAG_TARGET_EXCLUDED)
        if bad.size:
            u = int(bad[0])
            row = self.targets[u][self.targets[u] >= 0]
            excl = set(self.exclude[u].tolist())
            hit = next((int(t) for t in row if int(t) in excl), None)
            if hit is None:
                hit = int(self.padding_column)  # type: ignore[arg-type]
                raise ValueError(f"target item {hit} of row {u} is the padding_column; "
                                 "it cannot be ranked")
            raise ValueError(f"target item {hit} of row {u} is excluded; it cannot be ranked")


def _cum_discount(n: int) -> np.ndarray:
    """D[r] = sum_{i<=r} 1/log2(i+1), D[0] = 0."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, n + 2)))))


def _finish(
    counter: _Counter, gains: np.ndarray, ks: np.ndarray, ties: str, n_items: int
) -> dict[str, np.ndarray]:
    valid = np.arange(counter.equal.shape[1])[None, :] < counter.n_targets[:, None]
    equal = counter.equal - valid  # the target equals itself
    if (equal < 0).any():
        u = int(np.argwhere(equal < 0)[0, 0])
        raise RuntimeError(f"internal error: target score of row {u} not found among its scores")
    ts = counter.target_scores
    ndcg, hr, mrr = _kernels.finalize(
        counter.greater, equal, ts, gains, counter.n_targets, ks, TIES[ties],
        _cum_discount(n_items + 1),
    )
    out: dict[str, np.ndarray] = {}
    for i, k in enumerate(ks):
        out[f"ndcg@{int(k)}"] = ndcg[i]
    for i, k in enumerate(ks):
        out[f"hr@{int(k)}"] = hr[i]
    out["mrr"] = mrr
    return out


def _raise_on_nan(counter: _Counter, locate: Callable[[int], int]) -> None:
    bad = np.flatnonzero(counter.nans)
    if bad.size:
        u = int(bad[0])
        raise ValueError(f"scores contain NaN: row {u}, column {locate(u)}")
    bad_t = np.argwhere(np.isnan(counter.target_scores) & (np.arange(
        counter.target_scores.shape[1])[None, :] < counter.n_targets[:, None]))
    if bad_t.size:
        raise ValueError(f"scores contain NaN at the target of row {int(bad_t[0, 0])}")


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {sorted(TIES)}, got {ties!r}")


def ranking_metrics(
    scores: Any,
    targets: Any,
    ks: Iterable[int] = (10,),
    exclude: Any = None,
    ties: str = "expected",
    *,
    relevance: Any = None,
    padding_column: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-user NDCG@k, HR@k and MRR of full-catalog rankings.

    Formulas, per user. Candidates C = all items minus `exclude` and `padding_column`; a
    target t has rank r_t = 1 + |{i in C : s_i > s_t}| when nothing ties with it. Targets T
    with gains w_t (1 unless `relevance`); D(n) = sum_{i=1..n} 1/log2(i+1); H(n) = sum 1/i.

        DCG@k  = sum_{t in T} w_t * [r_t <= k] / log2(r_t + 1)
        IDCG@k = sum_{q=1..min(k, |T|)} w_(q) / log2(q + 1)   (gains sorted descending)
        NDCG@k = DCG@k / IDCG@k
        HR@k   = [min_t r_t <= k]
        MRR    = 1 / min_t r_t                                (no cutoff)

    Ties. With g candidates scoring strictly above t and e others equal to it (m = e + 1 items
    in its tie block), r_t lies in g+1..g+m. "optimistic" takes r_t = g+1 (targets first in
    the block, larger gains first), "pessimistic" r_t = g+m (last), and "expected" (default)
    the exact expectation over a uniformly random order of the block:

        E[DCG@k term] = w_t * (D(min(g+m, k)) - D(min(g, k))) / m
        E[HR@k]       = 1 - prod_{q<c} (m-r-q)/(m-q),   c = min(k-g, m), 0 when g >= k
        E[MRR]        = sum_j P(X=j) / (g+j),            X = first of r targets in the block

    where g, m and r (the number of targets in it) are those of the best-scored targets' block;
    for one target E[HR@k] = clamp(k-g, 0, m)/m and E[MRR] = (H(g+m) - H(g))/m. So a tie never
    helps or hurts the expected figure beyond chance: a constant scorer over n candidates gets
    HR@k = min(k, n)/n, NDCG@k = D(min(k, n))/n and MRR = H(n)/n, never 1 or 0; optimistic and
    pessimistic bound the expected value from above and below. NaN scores raise.

    Args:
        scores: float array or CPU tensor [n_users, n_items]; higher ranks first; column = item.
        targets: int [n_users] (one held-out item per user), int [n_users, T] padded with -1,
            or a sequence of per-user item sequences / {item: gain} mappings.
        ks: cutoffs; a k beyond the catalog behaves as the catalog size.
        exclude: items that are not candidates (the history): bool mask [n_users, n_items],
            int [n_users, L] indices padded with negatives (duplicates fine), or a sequence of
            per-user index sequences.
        ties: "expected" (exact expectation over uniformly random tie-breaking),
            "optimistic" (targets first among equal scores) or "pessimistic" (last).
        relevance: graded gains [n_users, T] aligned with 2-D targets (default 1).
        padding_column: a column that is never a candidate, e.g. 0 for rmdiag `Scorer` output,
            whose column 0 is the padding item.

    Returns:
        {"ndcg@k": ..., "hr@k": ..., "mrr": ...}, each float64 [n_users].

    Raises:
        ValueError: NaN scores, out-of-range or excluded targets, malformed shapes.
    """
    _check_ties(ties)
    ks_arr = _check_ks(ks)
    sc = _scores_array(scores)
    n_users, n_items = sc.shape
    tgt, gains, n_targets, _ = _targets_arrays(targets, relevance, n_users, n_items)
    excl = _exclude_array(exclude, n_users, n_items, padding_column, check_range=False)
    rows = np.arange(n_users)[:, None]
    target_scores = sc[rows, np.maximum(tgt, 0)]
    counter = _Counter(tgt, target_scores, n_targets, excl, padding_column, n_items)
    counter.add(sc, 0)
    counter.raise_on_excluded_target()
    _raise_on_nan(counter, lambda u: int(np.flatnonzero(np.isnan(sc[u]))[0]))
    return _finish(counter, gains, ks_arr, ties, n_items)


def ranking_metrics_chunked(
    score_block: Callable[[int, int, int, int], Any],
    n_users: int,
    n_items: int,
    targets: Any,
    target_scores: Any,
    ks: Iterable[int] = (10,),
    exclude: Any = None,
    ties: str = "expected",
    *,
    relevance: Any = None,
    padding_column: int | None = None,
    chunk_size: int = 8192,
    user_chunk_size: int = 4096,
) -> dict[str, np.ndarray]:
    """`ranking_metrics` over a score matrix produced block by block, never held whole.

    `score_block(user_lo, user_hi, item_lo, item_hi)` returns the scores of those users and
    items as a float array [user_hi - user_lo, item_hi - item_lo]. `target_scores` [n_users] or
    [n_users, T] are the targets' scores; they must equal what `score_block` returns for the
    target's cell (checked; a mismatch raises, because the counts would be against another value).
    Peak extra memory is one block plus O(n_users * (T + L)) for counts and exclusions.

    Formulas and ties exactly as `ranking_metrics` (the results are identical to it on the
    assembled matrix): with r_t the target's rank among the candidates and D(n) =
    sum_{i<=n} 1/log2(i+1), NDCG@k = sum_t w_t [r_t <= k] / log2(r_t+1) / IDCG@k, HR@k =
    [min_t r_t <= k], MRR = 1/min_t r_t; for a target with g candidates above it and m-1 tied
    with it, "expected" averages over the m tied positions (E[NDCG@k] = (D(min(g+m, k)) -
    D(min(g, k)))/m for one target, E[HR@k] = clamp(k-g, 0, m)/m, E[MRR] = (H(g+m) - H(g))/m),
    "optimistic" puts the target first among its ties and "pessimistic" last.
    """
    _check_ties(ties)
    ks_arr = _check_ks(ks)
    tgt, gains, n_targets, _ = _targets_arrays(targets, relevance, n_users, n_items)
    excl = _exclude_array(exclude, n_users, n_items, padding_column)
    ts = np.asarray(_to_numpy(target_scores), dtype=np.float64).reshape(n_users, -1)
    if ts.shape[1] != tgt.shape[1]:
        raise ValueError(f"target_scores shape {ts.shape} does not match targets {tgt.shape}")
    raw = None if isinstance(targets, list | tuple) else _to_numpy(targets)
    if raw is not None and raw.ndim == 2 and raw.shape == ts.shape:
        # `_targets_arrays` moved each row's valid slots first; the scores must follow them
        ts = np.take_along_axis(ts, _valid_first(np.asarray(raw)), axis=1)
    counter, observed = _count_chunks(score_block, ts, tgt, n_targets, excl, padding_column,
                                      n_items, chunk_size, user_chunk_size)
    differs = _differs(observed, ts, n_targets)
    if differs.size:
        u, i = (int(v) for v in differs[0])
        raise ValueError(
            f"target_scores[{u}] = {ts[u, i]!r} but score_block gives {observed[u, i]!r} for "
            f"item {int(tgt[u, i])}; pass the scores exactly as score_block computes them"
        )
    return _finish(counter, gains, ks_arr, ties, n_items)


def _differs(observed: np.ndarray, expected: np.ndarray, n_targets: np.ndarray) -> np.ndarray:
    """(row, slot) pairs of valid targets whose block value differs from the expected score."""
    valid = np.arange(expected.shape[1])[None, :] < n_targets[:, None]
    return np.argwhere(valid & (observed != expected))


def _count_chunks(
    score_block: Callable[[int, int, int, int], Any],
    target_scores: np.ndarray,
    targets: np.ndarray,
    n_targets: np.ndarray,
    exclude: np.ndarray,
    padding_column: int | None,
    n_items: int,
    chunk_size: int,
    user_chunk_size: int,
) -> tuple[_Counter, np.ndarray]:
    """Count block by block. Also returns the targets' scores as the blocks gave them."""
    if chunk_size < 1 or user_chunk_size < 1:
        raise ValueError("chunk sizes must be >= 1")
    n_users = target_scores.shape[0]
    counter = _Counter(targets, target_scores, n_targets, exclude, padding_column, n_items)
    observed = np.full(target_scores.shape, np.nan)
    nan_at: dict[int, int] = {}
    for u_lo in range(0, n_users, user_chunk_size):
        u_hi = min(u_lo + user_chunk_size, n_users)
        rows = slice(u_lo, u_hi)
        for i_lo in range(0, n_items, chunk_size):
            i_hi = min(i_lo + chunk_size, n_items)
            block = _scores_array(score_block(u_lo, u_hi, i_lo, i_hi))
            if block.shape != (u_hi - u_lo, i_hi - i_lo):
                raise ValueError(
                    f"score_block({u_lo}, {u_hi}, {i_lo}, {i_hi}) returned shape {block.shape}"
                )
            before = counter.nans[rows].copy()
            counter.add(block, i_lo, rows)
            for u in np.flatnonzero(counter.nans[rows] > before):
                nan_at.setdefault(u_lo + int(u), i_lo + int(np.flatnonzero(np.isnan(block[u]))[0]))
            t = targets[rows]
            r, c = np.nonzero((t >= i_lo) & (t < i_hi))
            observed[u_lo + r, c] = block[r, t[r, c] - i_lo]
    counter.raise_on_excluded_target()
    _raise_on_nan(counter, lambda u: nan_at[u])
    return counter, observed


def ranking_metrics_streaming(
    user_emb: Any,
    item_emb: Any,
    targets: Any,
    ks: Iterable[int] = (10,),
    exclude: Any = None,
    ties: str = "expected",
    *,
    relevance: Any = None,
    padding_column: int | None = None,
    chunk_size: int = 8192,
    user_chunk_size: int = 2048,
) -> dict[str, np.ndarray]:
    """`ranking_metrics` for scores = user_emb @ item_emb.T (float32), over item chunks.

    For catalogs too large for a dense [n_users, n_items] matrix. Memory: one float32
    [user_chunk_size, chunk_size] block (64 MiB at the defaults), one [user_chunk_size,
    user_chunk_size] block for the targets' scores, and per-user counters and exclusions.

    Consistency: every comparison is against the target's score exactly as the block product
    computes it (a row-wise dot product rounds differently in about 1 of 1000 cells, which would
    miscount ties). The targets' scores are first taken from a matrix product of the same shape
    family (the diagonal of user_chunk @ target_items.T); if any differs from the value the
    counting pass saw, the pass is repeated against the observed values.

    Formulas and ties exactly as `ranking_metrics`: with r_t the target's rank among the
    candidates and D(n) = sum_{i<=n} 1/log2(i+1), NDCG@k = sum_t w_t [r_t <= k] / log2(r_t+1)
    / IDCG@k, HR@k = [min_t r_t <= k], MRR = 1/min_t r_t; for a target with g candidates above
    it and m-1 tied with it, "expected" averages over the m tied positions (E[NDCG@k] =
    (D(min(g+m, k)) - D(min(g, k)))/m for one target, E[HR@k] = clamp(k-g, 0, m)/m, E[MRR] =
    (H(g+m) - H(g))/m), "optimistic" puts the target first among its ties and "pessimistic"
    last. Ties are frequent here when embeddings are quantised or items duplicated.
    """
    _check_ties(ties)
    ks_arr = _check_ks(ks)
    ue = np.ascontiguousarray(_to_numpy(user_emb), dtype=np.float32)
    ie = np.ascontiguousarray(_to_numpy(item_emb), dtype=np.float32)
    if ue.ndim != 2 or ie.ndim != 2 or ue.shape[1] != ie.shape[1]:
        raise ValueError(f"embeddings must be [U, d] and [I, d], got {ue.shape} and {ie.shape}")
    n_users, n_items = ue.shape[0], ie.shape[0]
    tgt, gains, n_targets, _ = _targets_arrays(targets, relevance, n_users, n_items)
    excl = _exclude_array(exclude, n_users, n_items, padding_column)
    if chunk_size < 1 or user_chunk_size < 1:
        raise ValueError("chunk sizes must be >= 1")
    block_buf = np.empty((min(user_chunk_size, n_users), min(chunk_size, n_items)), np.float32)

    def score_block(u_lo: int, u_hi: int, i_lo: int, i_hi: int) -> np.ndarray:
        out = block_buf[: u_hi - u_lo, : i_hi - i_lo]
        np.matmul(ue[u_lo:u_hi], ie[i_lo:i_hi].T, out=out)
        return out

    estimate = np.zeros(tgt.shape, dtype=np.float32)
    safe = np.maximum(tgt, 0)
    for u_lo in range(0, n_users, user_chunk_size):
        u_hi = min(u_lo + user_chunk_size, n_users)
        for i in range(tgt.shape[1]):
            estimate[u_lo:u_hi, i] = np.diagonal(ue[u_lo:u_hi] @ ie[safe[u_lo:u_hi, i]].T)
    for _attempt in range(2):
        counter, observed = _count_chunks(score_block, estimate, tgt, n_targets, excl,
                                          padding_column, n_items, chunk_size, user_chunk_size)
        if not _differs(observed, estimate, n_targets).size:
            return _finish(counter, gains, ks_arr, ties, n_items)
        estimate = np.where(np.isnan(observed), estimate, observed).astype(np.float32)
    raise RuntimeError("the matrix product is not deterministic; cannot rank consistently")
