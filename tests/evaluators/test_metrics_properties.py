"""Invariances, bounds, chance values, errors, and the streaming / chunked paths."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators import (
    metric_names,
    ranking_metrics,
    ranking_metrics_chunked,
    ranking_metrics_streaming,
    strategies,
)
from evaluators.strategies import RankingCase

KS = (1, 2, 5, 100)


def _stack(metrics: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([metrics[name] for name in metric_names(KS)])


@settings(settings.get_profile("evaluators"), max_examples=300)
@given(strategies.ranking_cases(multi_target=None, graded=True), st.integers(1, 5))
def test_strictly_increasing_map_changes_nothing(case: RankingCase, power: int) -> None:
    base = ranking_metrics(case.scores, case.targets, KS, case.exclude, relevance=case.relevance)
    # a strictly increasing map per user (through the rank among the row's distinct values, so
    # that rounding cannot merge two values) keeps every comparison, hence every tie group
    mapped = np.empty(case.scores.shape)
    for u, row in enumerate(case.scores):
        rank = np.unique(row, return_inverse=True)[1].astype(np.float64)
        mapped[u] = (rank + 0.5) ** power - 3.0 * u
    after = ranking_metrics(mapped, case.targets, KS, case.exclude, relevance=case.relevance)
    np.testing.assert_allclose(_stack(after), _stack(base), atol=1e-12)


@settings(settings.get_profile("evaluators"), max_examples=300)
@given(strategies.ranking_cases(multi_target=None, graded=True), st.randoms(use_true_random=False))
def test_permuting_items_with_targets_and_exclusions_changes_nothing(
    case: RankingCase, rnd: random.Random
) -> None:
    n_items = case.scores.shape[1]
    perm = list(range(n_items))
    rnd.shuffle(perm)
    perm = np.array(perm)  # new column c holds old item perm[c]
    inverse = np.argsort(perm)
    targets = np.where(case.targets >= 0, inverse[np.maximum(case.targets, 0)], -1)
    base = ranking_metrics(case.scores, case.targets, KS, case.exclude, relevance=case.relevance)
    moved = ranking_metrics(
        case.scores[:, perm], targets, KS, case.exclude[:, perm], relevance=case.relevance
    )
    np.testing.assert_allclose(_stack(moved), _stack(base), atol=1e-12)


@settings(settings.get_profile("evaluators"), max_examples=300)
@given(strategies.ranking_cases(multi_target=None, graded=True))
def test_bounds_monotonicity_and_tie_ordering(case: RankingCase) -> None:
    args = (case.scores, case.targets, KS, case.exclude)
    out = {
        t: ranking_metrics(*args, t, relevance=case.relevance)
        for t in ("expected", "optimistic", "pessimistic")
    }
    for values in out.values():
        stacked = _stack(values)
        assert np.all((stacked >= 0) & (stacked <= 1 + 1e-12))
        hr = np.array([values[f"hr@{k}"] for k in KS])
        assert np.all(np.diff(hr, axis=0) >= -1e-12)  # HR@k non-decreasing in k
    lo, mid, hi = (_stack(out[t]) for t in ("pessimistic", "expected", "optimistic"))
    assert np.all(lo <= mid + 1e-12) and np.all(mid <= hi + 1e-12)


@settings(settings.get_profile("evaluators"), max_examples=300)
@given(strategies.ranking_cases(multi_target=False))
def test_ndcg_at_1_equals_hr_at_1_for_single_targets(case: RankingCase) -> None:
    out = ranking_metrics(case.scores, case.targets, (1,), case.exclude)
    np.testing.assert_allclose(out["ndcg@1"], out["hr@1"], atol=1e-15)


@pytest.mark.parametrize("n_items", [1, 2, 7, 500])
def test_constant_scorer_gets_the_chance_value(n_items: int) -> None:
    rng = np.random.default_rng(n_items)
    targets = rng.integers(0, n_items, 20)
    out = ranking_metrics(np.full((20, n_items), 0.5), targets, (1, 10, 10_000))
    for k in (1, 10, 10_000):
        kk = min(k, n_items)
        np.testing.assert_allclose(out[f"hr@{k}"], kk / n_items)
        chance_ndcg = sum(1 / math.log2(r + 1) for r in range(1, kk + 1)) / n_items
        np.testing.assert_allclose(out[f"ndcg@{k}"], chance_ndcg)
    harmonic = sum(1 / r for r in range(1, n_items + 1))
    np.testing.assert_allclose(out["mrr"], harmonic / n_items)
    if n_items > 1:
        assert np.all(out["hr@1"] < 1) and np.all(out["mrr"] > 0)


def test_history_exclusion_shrinks_the_candidate_set() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    out = ranking_metrics(scores, [2], (1,), exclude=np.array([[0, 1, -1]]))
    assert out["hr@1"][0] == 1.0 and out["mrr"][0] == 1.0
    out = ranking_metrics(scores, [2], (1,), exclude=np.array([[1, 1, 0]]))  # duplicates
    assert out["mrr"][0] == 1.0
    out = ranking_metrics(scores, [2], (2,), padding_column=0)
    assert out["mrr"][0] == 0.5


def test_errors_name_the_problem() -> None:
    scores = np.zeros((3, 4))
    with pytest.raises(ValueError, match="NaN: row 1, column 2"):
        bad = scores.copy()
        bad[1, 2] = np.nan
        ranking_metrics(bad, [0, 0, 0])
    with pytest.raises(ValueError, match="out of range at row 2"):
        ranking_metrics(scores, [0, 1, 4])
    with pytest.raises(ValueError, match="out of range at row 0"):
        ranking_metrics(scores, [-1, 1, 2])
    with pytest.raises(ValueError, match="target item 3 of row 1 is excluded"):
        ranking_metrics(scores, [0, 3, 1], exclude=np.array([[1], [3], [2]]))
    with pytest.raises(ValueError, match="padding_column"):
        ranking_metrics(scores, [0, 3, 1], padding_column=0)
    with pytest.raises(ValueError, match="ties must be one of"):
        ranking_metrics(scores, [0, 1, 2], ties="random")
    with pytest.raises(ValueError, match="k must be >= 1"):
        ranking_metrics(scores, [0, 1, 2], ks=(0,))
    with pytest.raises(ValueError, match="3 rows but scores has"):
        ranking_metrics(np.zeros((2, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="lists target item 1 twice"):
        ranking_metrics(scores, np.array([[1, 1], [0, -1], [2, -1]]))


def _tied_embeddings(rng: np.random.Generator, n_users: int, n_items: int, dim: int):
    """Embeddings with small integer entries and duplicated items, so scores tie often."""
    users = rng.integers(-2, 3, (n_users, dim)).astype(np.float32)
    items = rng.integers(-2, 3, (n_items, dim)).astype(np.float32)
    items[n_items // 2 :] = items[: n_items - n_items // 2]
    return users, items


@pytest.mark.parametrize("ties", ["expected", "optimistic", "pessimistic"])
def test_streaming_equals_dense(ties: str) -> None:
    rng = np.random.default_rng(7)
    users, items = _tied_embeddings(rng, 300, 257, 4)
    targets = rng.integers(0, 257, 300)
    history = rng.integers(0, 257, (300, 12))
    history[history == targets[:, None]] = -1
    dense = ranking_metrics(users @ items.T, targets, KS, history, ties)
    streamed = ranking_metrics_streaming(
        users, items, targets, KS, history, ties, chunk_size=50, user_chunk_size=64
    )
    np.testing.assert_allclose(_stack(streamed), _stack(dense), atol=1e-12)
    # continuous embeddings, torch inputs, multi-target sets
    users = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    items = torch.randn(301, 16, generator=torch.Generator().manual_seed(2))
    sets = np.stack([rng.choice(301, 3, replace=False) for _ in range(200)])
    streamed = ranking_metrics_streaming(
        users, items, sets, KS, ties=ties, chunk_size=64, user_chunk_size=50
    )
    full = np.empty((200, 301), np.float32)
    for lo in range(0, 301, 64):  # the same block products the streaming path computes
        for u in range(0, 200, 50):
            full[u : u + 50, lo : lo + 64] = (
                users.numpy()[u : u + 50] @ items.numpy()[lo : lo + 64].T
            )
    dense = ranking_metrics(full, sets, KS, ties=ties)
    np.testing.assert_allclose(_stack(streamed), _stack(dense), atol=1e-12)


def test_chunked_scorer_matches_dense_and_checks_target_scores() -> None:
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, (40, 90)).astype(np.float64)
    targets = rng.integers(0, 90, 40)

    def block(u_lo: int, u_hi: int, i_lo: int, i_hi: int) -> np.ndarray:
        return scores[u_lo:u_hi, i_lo:i_hi]

    target_scores = scores[np.arange(40), targets]
    chunked = ranking_metrics_chunked(
        block, 40, 90, targets, target_scores, KS, chunk_size=17, user_chunk_size=9
    )
    np.testing.assert_allclose(_stack(chunked), _stack(ranking_metrics(scores, targets, KS)))
    with pytest.raises(ValueError, match="score_block gives"):
        ranking_metrics_chunked(block, 40, 90, targets, target_scores + 0.5, KS)


def test_chunked_target_sets_with_padding_before_a_target_match_dense() -> None:
    # Padded target sets may hold -1 before a valid target; the target scores are given slot by
    # slot as the targets are, so they must be reordered with them (they once were not).
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 8))
    targets = np.array([[-1, 5], [3, -1], [2, 6]])
    target_scores = np.where(targets >= 0,
                             np.take_along_axis(scores, np.maximum(targets, 0), 1), 0.0)
    dense = ranking_metrics(scores, targets, ks=(5,))
    chunked = ranking_metrics_chunked(lambda a, b, c, d: scores[a:b, c:d], 3, 8, targets,
                                      target_scores, ks=(5,), chunk_size=3)
    for name, values in dense.items():
        np.testing.assert_allclose(chunked[name], values, rtol=0, atol=1e-12)
