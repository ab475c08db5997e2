from collections.abc import Callable

import pytest
import torch

from trainers import (
    Context,
    ModelConfig,
    Scorer,
    SequentialRecommender,
    policy_scores,
    sequence_windows,
)
from trainers.data import next_item_targets, sequence_data, sequences_to_events

Make = Callable[..., SequentialRecommender]


def _context(items: torch.Tensor) -> Context:
    return Context(torch.arange(items.shape[0]), items, torch.ones(items.shape))


def test_scores_cover_the_catalog_with_padding_masked(make_model: Make) -> None:
    model = make_model(n_items=30).eval()
    assert isinstance(model, Scorer)
    scores = model(_context(torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])))
    assert scores.shape == (2, 31)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


def test_output_ignores_future_items_and_left_padding(make_model: Make) -> None:
    model = make_model(n_items=30).eval()
    items = torch.tensor([[0, 0, 0, 3, 4, 9, 12, 2]])
    with torch.no_grad():
        hidden = model.hidden_states(items)
        changed = items.clone()
        changed[0, -1] = 17  # a later item cannot change earlier positions
        assert torch.allclose(model.hidden_states(changed)[0, :-1], hidden[0, :-1], atol=1e-6)
        # more or less left padding leaves the latest position's state unchanged
        padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), items[:, 3:]], dim=1)
        assert torch.allclose(model.hidden_states(padded)[0, -1], hidden[0, -1], atol=1e-5)
        assert torch.allclose(model.hidden_states(items[:, 3:])[0, -1], hidden[0, -1], atol=1e-5)


def test_sequence_and_event_data_agree_on_the_latest_target(make_model: Make) -> None:
    """Positions count from the right end (as SASRec's fixed left-padded window), so a row's
    last target scores exactly as the same event given as a history; earlier targets sit at
    earlier positions and differ, as in SASRec."""
    model = make_model(n_items=30).eval()
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, 31, (4, 9), generator=generator)
    items[1, :4] = 0
    data = sequence_data(items, torch.rand(items.shape, generator=generator) * 4 + 1)
    events = sequences_to_events(data)
    assert len(events["targets"]) == int((items[:, 1:] != 0).sum())
    with torch.no_grad():
        all_at_once = next_item_targets(model, data)
        one_by_one = next_item_targets(model, events)
    last = (items[:, 1:] != 0).sum(1).cumsum(0) - 1  # each row's final target, flattened
    assert torch.equal(events["targets"][last], items[:, -1])
    assert torch.allclose(all_at_once.log_prob[last], one_by_one.log_prob[last], atol=1e-5)
    assert torch.allclose(all_at_once.history_mean, one_by_one.history_mean)
    assert torch.equal(all_at_once.reward, one_by_one.reward)


def test_sampled_softmax_with_log_q_approximates_the_full_softmax(make_model: Make) -> None:
    model = make_model(n_items=40).eval()
    data = sequence_data(torch.randint(1, 41, (3, 6)), torch.ones(3, 6))
    log_q = torch.log_softmax(torch.randn(40), 0)  # any proposal works after correction
    with torch.no_grad():
        full = next_item_targets(model, data).log_prob
        generator = torch.Generator().manual_seed(0)
        sampled = next_item_targets(model, data, 100_000, log_q, generator).log_prob
    assert torch.allclose(sampled, full, atol=0.05)


def test_policy_scores_exclude_history(make_model: Make) -> None:
    model = make_model(n_items=30)
    context = _context(torch.tensor([[0, 3, 4], [5, 6, 7]]))
    scores = policy_scores(model, context, batch_size=1)
    assert torch.isneginf(scores[0, [0, 3, 4]]).all() and torch.isneginf(scores[1, [5, 6, 7]]).all()
    assert torch.isfinite(scores[0, 5:]).all()
    assert model.training  # restored


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_items=10, hidden=30, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(n_items=10, dropout=1.0)


def test_sequence_windows_make_every_event_a_target_at_most_once() -> None:
    items = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 6, 7],   # 3 events
                          [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # 10 events
                          [0, 0, 0, 0, 0, 11, 12, 13, 14, 15],  # 5 events: one full window
                          [0, 0, 0, 0, 0, 0, 0, 0, 0, 4]])  # 1 event: nothing to learn
    rewards = items.float() / 10
    data = sequence_windows(items, rewards, window=4)
    assert data["items"].shape == (5, 5)  # 1 + 3 + 1 windows
    targets = data["items"][:, 1:][data["items"][:, 1:] != 0]
    # every later event is a target exactly once; a user's first event only when padding
    # precedes it in its window (a prediction from an empty history)
    assert sorted(targets.tolist()) == sorted([5, 6, 7, *range(1, 11), 12, 13, 14, 15])
    assert torch.equal(data["rewards"], data["items"].float() / 10)
