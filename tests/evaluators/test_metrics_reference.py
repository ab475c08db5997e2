"""Agreement with the plain-Python reference on thousands of generated cases (exact)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings

from evaluators import ranking_metrics, reference, strategies
from evaluators.strategies import RankingCase

KS = (1, 2, 3, 10)
TIES = ("expected", "optimistic", "pessimistic")


def _assert_agree(case: RankingCase, ties: str, exclude: object) -> None:
    ours = ranking_metrics(case.scores, case.targets, KS, exclude, ties, relevance=case.relevance)
    ref = reference.ranking_metrics(
        case.scores, case.targets, KS, case.exclude, ties, relevance=case.relevance
    )
    assert list(ours) == list(ref)
    got = np.array([ours[name] for name in ref])
    want = np.array([ref[name] for name in ref])
    assert np.abs(got - want).max() <= 1e-12, (ties, list(ref), got, want)


@settings(settings.get_profile("evaluators"), max_examples=2000)
@given(strategies.ranking_cases(max_users=4, max_items=7))
def test_single_target_matches_reference(case: RankingCase) -> None:
    for ties in TIES:
        _assert_agree(case, ties, case.exclude)
    # the padded-index form of the exclusions gives the same numbers
    _assert_agree(case, "expected", case.exclude_indices)


@settings(settings.get_profile("evaluators"), max_examples=1000)
@given(strategies.ranking_cases(max_users=3, max_items=6, multi_target=True, graded=True))
def test_graded_target_sets_match_reference(case: RankingCase) -> None:
    for ties in TIES:
        _assert_agree(case, ties, case.exclude)


@settings(settings.get_profile("evaluators"), max_examples=300)
@given(strategies.ranking_cases(max_users=3, max_items=60, ties=False))
def test_larger_untied_catalogs_match_reference(case: RankingCase) -> None:
    _assert_agree(case, "expected", case.exclude)


def test_torch_float16_and_ragged_inputs_match_numpy() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (5, 9)).astype(np.float32)
    targets = np.array([0, 3, 8, 2, 5])
    history = [[1, 2], [], [0, 0, 7], [8], [1, 2, 3, 4]]
    dense = ranking_metrics(scores, targets, (1, 5), exclude=history)
    as_torch = ranking_metrics(
        torch.from_numpy(scores).half(), torch.from_numpy(targets), (1, 5), exclude=history
    )
    ref = reference.ranking_metrics(scores, targets, (1, 5), history)
    for name in ref:
        np.testing.assert_allclose(dense[name], ref[name], atol=1e-12)
        np.testing.assert_allclose(as_torch[name], ref[name], atol=1e-12)
    # targets given as {item: gain} mappings
    graded = ranking_metrics(scores, [{0: 2.0, 4: 1.0}, {3: 1.0}, {8: 3.0}, {2: 1.0}, {5: 1.0}])
    ref_graded = reference.ranking_metrics(
        scores, [{0: 2.0, 4: 1.0}, {3: 1.0}, {8: 3.0}, {2: 1.0}, {5: 1.0}]
    )
    for name in ref_graded:
        np.testing.assert_allclose(graded[name], ref_graded[name], atol=1e-12)
