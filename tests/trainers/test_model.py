import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import (
    Context,
    ModelConfig,
    Scorer,
    SequentialRecommender,
    policy_scores,
    policy_user_states,
    sequence_windows,
)
from trainers.data import (
    batch_context,
    next_item_targets,
    rollout_histories,
    sequence_data,
    sequences_to_events,
)
from trainers.model import ARCHITECTURES, time_gap_bucket

Make = Callable[..., SequentialRecommender]


@pytest.fixture(params=ARCHITECTURES)
def make_model(request: pytest.FixtureRequest, make_model: Make) -> Make:
    """Every test of this module runs on both blocks (SASRec's and HSTU's)."""
    def make(*args: object, **overrides: object) -> SequentialRecommender:
        return make_model(*args, **({"architecture": request.param} | overrides))
    return make


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


def test_user_states_against_item_embeddings_rank_as_policy_scores(make_model: Make) -> None:
    """The streaming path's inputs (states, item embeddings) give the full-catalog metrics that
    dense policy scores give, history excluded the same way."""
    from evaluators import ranking_metrics, ranking_metrics_streaming

    model = make_model(n_items=30)
    history = torch.tensor([[0, 3, 4], [5, 6, 7], [0, 0, 9]])
    context = _context(history)
    states = policy_user_states(model, context, batch_size=2)
    assert states.shape == (3, model.config.hidden) and model.training  # restored
    dense = policy_scores(model, context, exclude_history=False)
    torch.testing.assert_close(states @ model.item_embedding.weight.detach().T[:, 1:],
                               dense[:, 1:], rtol=1e-5, atol=1e-5)
    targets, exclude = [[1], [2], [10]], [row[row > 0].tolist() for row in history]
    streamed = ranking_metrics_streaming(states, model.item_embedding.weight.detach(), targets,
                                         (1, 5), exclude, padding_column=0, chunk_size=7)
    masked = policy_scores(model, context)
    expected = ranking_metrics(masked, targets, (1, 5), padding_column=0)
    for name, values in expected.items():
        assert streamed[name] == pytest.approx(values, abs=1e-9)


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


def test_config_refuses_an_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(n_items=10, architecture="bert4rec")


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**62), 2**62), st.integers(1, 200))
def test_time_gap_bucket_is_hstus_log_bucketing(gap: int, n_buckets: int) -> None:
    expected = min(n_buckets, max(0, math.floor(math.log(max(abs(gap), 1)) / 0.301)))
    got = int(time_gap_bucket(torch.tensor([gap]), n_buckets)[0])
    # float rounding at an exact bucket edge may move the gap to the neighbouring bucket
    assert abs(got - expected) <= 1 and 0 <= got <= n_buckets
    if abs(gap) < 2**40:
        assert got == expected


def _small(architecture: str) -> SequentialRecommender:
    torch.manual_seed(0)
    return SequentialRecommender(ModelConfig(n_items=30, hidden=32, n_blocks=1, max_len=20,
                                             dropout=0.0, architecture=architecture)).eval()


def test_hstu_time_bias_reads_gaps_not_absolute_times() -> None:
    model = _small("hstu")
    with torch.no_grad():
        for block in model.blocks:
            block.time_bias.copy_(torch.linspace(-3, 3, block.time_bias.numel()))
    items = torch.tensor([[0, 0, 3, 4, 9, 12, 2]])
    times = torch.tensor([[0, 0, 100, 200, 10_000, 10_060, 2_000_000]])
    with torch.no_grad():
        hidden = model.hidden_states(items, times)
        shifted = model.hidden_states(items, times + 1_234_567)
        regapped = model.hidden_states(items, torch.tensor([[0, 0, 1, 2, 3, 4, 5]]))
        untimed = model.hidden_states(items)
        padding_times = model.hidden_states(items, times + torch.tensor([[99, 7, 0, 0, 0, 0, 0]]))
    assert torch.allclose(hidden, shifted, atol=1e-6)  # only differences count
    assert torch.allclose(hidden[0, 2:], padding_times[0, 2:], atol=1e-6)  # padding is masked
    assert not torch.allclose(hidden[0, -1], regapped[0, -1], atol=1e-3)
    assert not torch.allclose(hidden[0, -1], untimed[0, -1], atol=1e-3)


def test_sasrec_ignores_timestamps() -> None:
    model = _small("sasrec")
    items = torch.tensor([[0, 3, 4, 9]])
    with torch.no_grad():
        assert torch.equal(model.hidden_states(items),
                           model.hidden_states(items, torch.tensor([[0, 5, 60, 7000]])))


def test_timestamps_travel_with_the_windows_and_their_events() -> None:
    generator = torch.Generator().manual_seed(3)
    # distinct items per user, so an item names its event
    items = torch.stack([torch.randperm(30, generator=generator)[:12] + 1 for _ in range(3)])
    items[0, :5] = 0
    times = torch.randint(0, 10**9, (3, 12), generator=generator).sort(1).values
    data = sequence_windows(items, items.float(), window=4, users=torch.arange(3),
                            timestamps=times)
    # each window's times are the times of its items (item i's time is looked up directly)
    lookup = {(u, int(i)): int(t) for u in range(3) for i, t in zip(items[u], times[u],
                                                                     strict=True) if i != 0}
    for row in range(data["items"].shape[0]):
        user = int(data["users"][row])
        for item, stamp in zip(data["items"][row], data["timestamps"][row], strict=True):
            assert (int(stamp) == lookup[(user, int(item))]) if item != 0 else stamp == 0
    events = sequences_to_events(data)
    assert events["history_timestamps"].shape == events["history_items"].shape
    real = events["history_items"] != 0
    assert torch.all(events["history_timestamps"][~real] == 0)
    for row in range(len(events["targets"])):
        user = int(events["users"][row])
        for item, stamp in zip(events["history_items"][row][real[row]],
                               events["history_timestamps"][row][real[row]], strict=True):
            assert int(stamp) == lookup[(user, int(item))]
    context = batch_context(events)
    assert context.history_timestamps is not None
    assert torch.equal(context.index(slice(1, 3)).history_timestamps,
                       events["history_timestamps"][1:3])
    assert "history_timestamps" in rollout_histories(data)
    with pytest.raises(ValueError, match="timestamps"):
        sequence_data(items, items.float(), timestamps=times[:, :-1])
