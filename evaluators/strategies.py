"""Hypothesis strategies for ranking-metric inputs: score matrices with ties, targets, exclusions.

`ranking_cases()` draws a complete, valid input (every target is a candidate, graded relevance
optional); `score_matrices()` draws just the scores. Scores come from a few distinct values when
`ties=True`, so tie groups of every size, including "all items tied", appear often.

    from hypothesis import given, settings
    from evaluators import reference, strategies

    @settings(max_examples=500, derandomize=True, database=None)
    @given(strategies.ranking_cases(max_items=6))
    def test_my_metric(case):
        ref = reference.ranking_metrics(case.scores, case.targets, (1, 3), case.exclude,
                                        relevance=case.relevance)
        ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["RankingCase", "score_matrices", "ranking_cases"]


@dataclass(frozen=True)
class RankingCase:
    """One generated input for `ranking_metrics`.

    scores [n_users, n_items]; targets int [n_users] (single) or [n_users, T] padded with -1;
    exclude bool [n_users, n_items] (never True at a target); relevance [n_users, T] or None.
    """

    scores: np.ndarray
    targets: np.ndarray
    exclude: np.ndarray
    relevance: np.ndarray | None

    @property
    def exclude_indices(self) -> np.ndarray:
        """The same exclusions as int [n_users, L] item indices padded with -1."""
        width = max(int(self.exclude.sum(axis=1).max(initial=0)), 1)
        out = np.full((self.exclude.shape[0], width), -1, dtype=np.int64)
        for u, row in enumerate(self.exclude):
            items = np.flatnonzero(row)
            out[u, : items.size] = items
        return out


@st.composite
def score_matrices(
    draw: st.DrawFn,
    n_users: int | st.SearchStrategy[int] = 4,
    n_items: int | st.SearchStrategy[int] = 7,
    ties: bool | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Score matrices [n_users, n_items]; an int means "1 to that many", a strategy is drawn.

    ties=True: values from at most 4 levels; False: finite float32, distinct within each row;
    None: either kind (the untied kind may still repeat a value by chance).
    """
    u = draw(st.integers(1, n_users)) if isinstance(n_users, int) else draw(n_users)
    i = draw(st.integers(1, n_items)) if isinstance(n_items, int) else draw(n_items)
    tied = draw(st.booleans()) if ties is None else ties
    if tied:
        levels = draw(st.integers(1, 4))
        elements = st.integers(0, levels - 1).map(float)
    else:
        elements = st.floats(-1e6, 1e6, allow_nan=False, width=32)
        if ties is False:  # no ties at all: distinct values within each row
            return np.stack([
                draw(hnp.arrays(dtype, i, elements=elements, unique=True)) for _ in range(u)
            ])
    return draw(hnp.arrays(dtype, (u, i), elements=elements))


@st.composite
def ranking_cases(
    draw: st.DrawFn,
    max_users: int = 4,
    max_items: int = 7,
    multi_target: bool | None = False,
    graded: bool = False,
    ties: bool | None = None,
) -> RankingCase:
    """A valid ranking input. multi_target=None draws single or multi; graded gives gains 1..3."""
    n_items = draw(st.integers(1, max_items))
    scores = draw(score_matrices(max_users, st.just(n_items), ties=ties))
    n_users = scores.shape[0]
    multi = draw(st.booleans()) if multi_target is None else multi_target
    items = st.integers(0, n_items - 1)
    if multi:
        sets = [
            draw(st.lists(items, min_size=1, max_size=min(n_items, 3), unique=True))
            for _ in range(n_users)
        ]
        width = max(len(s) for s in sets)
        targets = np.full((n_users, width), -1, dtype=np.int64)
        for u, s in enumerate(sets):
            targets[u, : len(s)] = s
    else:
        targets = np.array([draw(items) for _ in range(n_users)], dtype=np.int64)
    relevance = None
    if graded:
        gains = draw(hnp.arrays(np.float64, targets.reshape(n_users, -1).shape,
                                elements=st.integers(1, 3).map(float)))
        relevance = np.where(targets.reshape(n_users, -1) >= 0, gains, 0.0)
        if not multi:
            relevance = relevance[:, :1]
            targets = targets.reshape(n_users, 1)
    exclude = draw(hnp.arrays(np.bool_, (n_users, n_items), elements=st.booleans()))
    t2 = targets.reshape(n_users, -1)
    for u in range(n_users):
        exclude[u, t2[u][t2[u] >= 0]] = False
    return RankingCase(scores, targets, exclude, relevance)
