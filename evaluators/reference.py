"""Slow, obviously correct ranking metrics: the definition `evaluators.metrics` is tested against.

Plain Python, one user at a time: build the candidate list, order it by score, read the targets'
ranks off the ordering. For `ties="expected"` every ordering of tied items is enumerated
explicitly and the metric is averaged over them, so the result is the expectation over uniformly
random tie-breaking by construction. The one shortcut: items that are not targets are
interchangeable, so within a tie group only the targets' positions are enumerated (every ordered
choice of distinct positions, i.e. `itertools.permutations(range(m), r)`); the other items fill
the remaining slots in a fixed order.

Use it to property-test your own metric code, e.g. with `evaluators.strategies`:

    from hypothesis import given
    from evaluators import reference, strategies

    @given(strategies.ranking_cases())
    def test_mine(case):
        expected = reference.ranking_metrics(case.scores, case.targets, (1, 5), case.exclude)
        ...  # compare with your implementation
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ranking_metrics", "metrics_of_ordering", "tie_orderings"]


def metrics_of_ordering(
    ordering: Sequence[int], gains: Mapping[int, float], ks: Iterable[int]
) -> dict[str, float]:
    """NDCG@k, HR@k and MRR of one ranked list (best first) for targets with the given gains."""
    ks = list(ks)
    ranks = {item: r for r, item in enumerate(ordering, start=1) if item in gains}
    ideal_gains = sorted(gains.values(), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        dcg = sum(g / math.log2(ranks[i] + 1) for i, g in gains.items() if ranks[i] <= k)
        idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal_gains[:k], start=1))
        out[f"ndcg@{k}"] = dcg / idcg
    for k in ks:
        out[f"hr@{k}"] = 1.0 if min(ranks.values()) <= k else 0.0
    out["mrr"] = 1.0 / min(ranks.values())
    return out


def tie_orderings(
    candidates: Sequence[int],
    scores: Sequence[float],
    gains: Mapping[int, float],
    ties: str,
) -> Iterator[list[int]]:
    """Every ranking of `candidates` by descending score that `ties` allows.

    expected: all orders of each tie group that holds a target (each equally likely);
    optimistic: targets first in their tie group, larger gain first; pessimistic: targets last,
    larger gain last.
    """
    by_score: dict[float, list[int]] = {}
    for item in candidates:
        by_score.setdefault(float(scores[item]), []).append(item)
    groups = [by_score[s] for s in sorted(by_score, reverse=True)]
    if ties == "expected":
        choices = [_placements(g, gains) for g in groups]
        for combo in itertools.product(*choices):
            yield [item for group in combo for item in group]
    elif ties in ("optimistic", "pessimistic"):
        ordering: list[int] = []
        for g in groups:
            hits = sorted((i for i in g if i in gains), key=lambda i: -gains[i])
            others = [i for i in g if i not in gains]
            ordering += hits + others if ties == "optimistic" else others + hits[::-1]
        yield ordering
    else:
        raise ValueError(f"unknown ties mode {ties!r}")


def _placements(group: Sequence[int], gains: Mapping[int, float]) -> list[list[int]]:
    """The orders of one tie group that can differ for the metrics, each equally likely.

    Under a uniformly random order of the group, the targets' positions are uniform over all
    ordered choices of distinct positions; the other items only fill the remaining slots (which
    of them sits where moves no target), so they keep a fixed order.
    """
    hits = [i for i in group if i in gains]
    others = [i for i in group if i not in gains]
    orders = []
    for positions in itertools.permutations(range(len(group)), len(hits)):
        order: list[int | None] = [None] * len(group)
        for item, pos in zip(hits, positions, strict=True):
            order[pos] = item
        rest = iter(others)
        orders.append([next(rest) if x is None else x for x in order])
    return orders


def _orderings_count(candidates: Sequence[int], scores: Sequence[float], gains: Mapping) -> int:
    sizes: dict[float, list[int]] = {}
    for item in candidates:
        sizes.setdefault(float(scores[item]), []).append(item)
    return math.prod(len(_placements(g, gains)) for g in sizes.values())


def _user_targets(targets: Any, relevance: Any, u: int) -> dict[int, float]:
    t = targets[u]
    if isinstance(t, Mapping):
        return {int(i): float(g) for i, g in t.items()}
    items = [int(i) for i in np.asarray(t).reshape(-1) if int(i) >= 0]
    if relevance is None:
        return dict.fromkeys(items, 1.0)
    rel = [float(g) for g in np.asarray(relevance[u]).reshape(-1)]
    return {i: rel[x] for x, i in enumerate(items)}


def _user_excluded(exclude: Any, u: int, n_items: int) -> set[int]:
    if exclude is None:
        return set()
    row = np.asarray(exclude[u])
    if row.dtype == np.bool_:
        return {j for j in range(n_items) if row[j]}
    return {int(j) for j in row.reshape(-1) if int(j) >= 0}


def ranking_metrics(
    scores: Any,
    targets: Any,
    ks: Iterable[int] = (10,),
    exclude: Any = None,
    ties: str = "expected",
    *,
    relevance: Any = None,
    padding_column: int | None = None,
    max_orderings: int = 100_000,
) -> dict[str, list[float]]:
    """Same arguments and meaning as `evaluators.ranking_metrics`; returns lists of floats.

    Raises ValueError when a user would need more than `max_orderings` tie orders.
    """
    ks = list(ks)
    scores = np.asarray(scores, dtype=np.float64)
    n_users, n_items = scores.shape
    out: dict[str, list[float]] = {
        name: [] for name in [f"ndcg@{k}" for k in ks] + [f"hr@{k}" for k in ks] + ["mrr"]
    }
    for u in range(n_users):
        row = [float(x) for x in scores[u]]
        gains = _user_targets(targets, relevance, u)
        excluded = _user_excluded(exclude, u, n_items)
        if padding_column is not None:
            excluded.add(padding_column)
        if any(i in excluded for i in gains):
            raise ValueError(f"row {u}: a target is excluded")
        candidates = [j for j in range(n_items) if j not in excluded]
        if _orderings_count(candidates, row, gains) > max_orderings:
            raise ValueError(f"row {u} has more than {max_orderings} tie orders")
        totals: dict[str, float] = dict.fromkeys(out, 0.0)
        count = 0
        for ordering in tie_orderings(candidates, row, gains, ties):
            for name, value in metrics_of_ordering(ordering, gains, ks).items():
                totals[name] += value
            count += 1
        for name in out:
            out[name].append(totals[name] / count)
    return out
