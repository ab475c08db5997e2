import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import PrefixTrie, constrained_beam_search
from trainers.grpo import beam_candidates
from trainers.semantic_ids import policy_step_log_probs


@st.composite
def catalogs(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    """Unique codes of 1-4 tokens over a vocabulary of 2-5, for 1-25 items."""
    depth = draw(st.integers(1, 4))
    vocab = draw(st.integers(2, 5))
    codes = draw(st.lists(st.tuples(*[st.integers(0, vocab - 1)] * depth), min_size=1,
                          max_size=min(25, vocab**depth), unique=True))
    return torch.tensor(codes), vocab


def _random_token_model(vocab: int, depth: int, seed: int):
    """An arbitrary next-token model that knows nothing of the valid codes: log-softmax of a
    fixed random table indexed by (step, previous token)."""
    table = torch.log_softmax(
        torch.randn(depth, vocab + 1, vocab, generator=torch.Generator().manual_seed(seed)) * 3,
        dim=2)

    def step(tokens: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[2]
        previous = tokens[:, :, -1] if t else torch.full(nodes.shape, vocab)
        return table[t][previous]

    def score(code: tuple[int, ...]) -> float:
        previous, total = vocab, 0.0
        for t, token in enumerate(code):
            total += float(table[t, previous, token])
            previous = token
        return total

    return step, score


@settings(max_examples=60, deadline=None)
@given(catalogs(), st.integers(1, 12), st.integers(1, 3), st.integers(0, 10_000))
def test_constrained_beam_search_only_emits_valid_distinct_codes(
    catalog: tuple[torch.Tensor, int], width: int, batch: int, seed: int
) -> None:
    codes, vocab = catalog
    trie = PrefixTrie(codes, vocab)
    step, score = _random_token_model(vocab, codes.shape[1], seed)
    items, scores = constrained_beam_search(step, trie, batch, width)
    assert items.shape == scores.shape == (batch, width)
    n_real = min(width, trie.n_items)
    real = items[:, :n_real]
    assert bool((real >= 1).all()) and bool((items[:, n_real:] == 0).all())
    for row in real.tolist():
        assert len(set(row)) == n_real  # distinct
        for item in row:  # each emitted code is a valid code, and it decodes back to its item
            assert tuple(codes[item - 1].tolist()) in {tuple(c) for c in codes.tolist()}
            assert int(trie.lookup(codes[item - 1])) == item
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    if width >= trie.n_items:  # no prefix is ever pruned: exhaustive, equals brute force
        brute = sorted((score(tuple(code)) for code in codes.tolist()), reverse=True)
        expected = torch.tensor(brute)
        assert torch.allclose(scores[0, :n_real], expected, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(catalogs(), st.integers(1, 8), st.integers(0, 10_000))
def test_beam_scores_of_an_item_policy_are_its_log_probabilities(
    catalog: tuple[torch.Tensor, int], width: int, seed: int
) -> None:
    codes, vocab = catalog
    trie = PrefixTrie(codes, vocab)
    logits = torch.randn(2, trie.n_items + 1, generator=torch.Generator().manual_seed(seed)) * 2
    logits[:, 0] = -1e9
    log_policy = torch.log_softmax(logits, 1)
    items, scores = constrained_beam_search(policy_step_log_probs(trie, log_policy), trie, 2,
                                            width)
    n_real = min(width, trie.n_items)
    assert torch.allclose(scores[:, :n_real], log_policy.gather(1, items[:, :n_real]), atol=1e-4)
    if codes.shape[1] == 1 or width >= trie.n_items:  # one step, or exhaustive: the top-W of π
        assert torch.equal(items[:, :n_real], log_policy.topk(n_real, dim=1).indices)


def test_beam_search_can_differ_from_the_top_items() -> None:
    """Beam search ranks prefixes by their mass: with width 1, the prefix holding more mass
    wins even when its best item is not the policy's top item."""
    codes = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0]])  # items 1-3 share prefix 0
    trie = PrefixTrie(codes)
    log_policy = torch.log(torch.tensor([[1e-12, 0.25, 0.25, 0.2, 0.3]]))
    assert int(beam_candidates(log_policy, 1)[0, 0]) == 4  # plain ids: the top item
    assert int(beam_candidates(log_policy, 1, trie)[0, 0]) in (1, 2)  # prefix 0 holds 0.7


def test_trie_masks_and_refuses_bad_codes() -> None:
    trie = PrefixTrie(torch.tensor([[0, 1], [0, 2], [2, 0]]), vocab_size=3)
    assert trie.allowed(torch.tensor([0])).tolist() == [[True, False, True]]
    first = trie.step(torch.tensor(0), torch.tensor(0))
    assert trie.allowed(first).tolist() == [False, True, True]
    assert trie.lookup(torch.tensor([[0, 2], [2, 0], [1, 0], [0, 0]])).tolist() == [2, 3, 0, 0]
    assert int(trie.step(torch.tensor(0), torch.tensor(3))) == -1  # outside the vocabulary
    with pytest.raises(ValueError, match="share a code"):
        PrefixTrie(torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="vocab_size"):
        PrefixTrie(torch.tensor([[0, 4]]), vocab_size=3)
