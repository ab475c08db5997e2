"""A-SFT's sampled baseline: unbiased for Σ_a π_ref(a|s) R̂(s, a), its variance Var_π(R̂)/K."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trainers.sft as sft
from trainers import ASFTConfig, Context
from trainers.data import sequence_data, sequences_to_events
from trainers.model import ModelConfig, SequentialRecommender, frozen_copy
from trainers.sft import (
    _event_chunks,
    a_sft_advantages,
    reward_model_baseline,
    sampled_reward_model_baseline,
)

REPLICAS = 2000  # independent estimates per state, as rows of one call


def _tiny_reference() -> SequentialRecommender:
    """A frozen 30-item policy, seeded: π_ref of the chunking tests."""
    torch.manual_seed(0)
    return frozen_copy(SequentialRecommender(
        ModelConfig(n_items=30, hidden=8, n_blocks=1, n_heads=1, max_len=8)))


def _history_reward(context: Context, candidates: torch.Tensor) -> torch.Tensor:
    """A reward that reads the candidate and the history, so a misplaced event shows."""
    return (candidates % 7).float() + context.history_rewards.sum(1, keepdim=True)


@dataclasses.dataclass
class TableWorld:
    """A reference policy with fixed logits per state and a reward table R̂[state, item]."""

    logits: torch.Tensor  # [S, n_items + 1], column 0 padding
    rewards: torch.Tensor  # [S, n_items + 1]

    def reference(self, context: Context) -> torch.Tensor:
        return self.logits[context.users].clone()

    def reward_fn(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        assert bool((items >= 1).all()), "the padding item is no action"
        return self.rewards[context.users[:, None], items]

    def events(self, replicas: int) -> dict[str, torch.Tensor]:
        users = torch.arange(self.logits.shape[0]).repeat_interleave(replicas)
        return {"users": users, "history_items": torch.zeros(users.shape[0], 1, dtype=torch.long),
                "history_rewards": torch.zeros(users.shape[0], 1)}

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact mean, variance and 4th central moment of R̂(s, a), a ~ π_ref(·|s), per state."""
        probs = torch.softmax(self.logits.double()[:, 1:], dim=1)
        rewards = self.rewards.double()[:, 1:]
        mean = (probs * rewards).sum(1)
        centred = rewards - mean[:, None]
        return mean, (probs * centred**2).sum(1), (probs * centred**4).sum(1)


@st.composite
def table_worlds(draw: st.DrawFn) -> TableWorld:
    n_states, n_items = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    value = st.floats(-3.0, 3.0, allow_nan=False, width=32)
    logits = torch.tensor(draw(st.lists(st.lists(value, min_size=n_items, max_size=n_items),
                                        min_size=n_states, max_size=n_states)))
    reward = st.floats(0.0, 5.0, allow_nan=False, width=32)
    rewards = torch.tensor(draw(st.lists(st.lists(reward, min_size=n_items, max_size=n_items),
                                         min_size=n_states, max_size=n_states)))
    pad = torch.zeros(n_states, 1)
    # the padding column gets the largest logit and reward: a sampler that drew it would show
    return TableWorld(torch.cat([pad + 10.0, logits], 1), torch.cat([pad + 100.0, rewards], 1))


@settings(max_examples=25, deadline=None)
@given(world=table_worlds(), samples=st.sampled_from([2, 8, 32]), seed=st.integers(0, 2**31))
def test_sampled_baseline_is_unbiased_with_the_variance_it_states(
        world: TableWorld, samples: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    estimate = sampled_reward_model_baseline(world.reward_fn, world.reference,
                                             world.events(REPLICAS), samples, batch_size=777,
                                             generator=generator)
    values = estimate.value.double().view(-1, REPLICAS)
    stated = estimate.variance.double().view(-1, REPLICAS)
    mean, variance, fourth = world.moments()
    # Mean over the replicas: the exact sum within 5 standard errors, the errors computed
    # from the variance the estimator states (its average over the replicas).
    standard_error = (stated.mean(1) / REPLICAS).sqrt()
    assert bool(((values.mean(1) - mean).abs() <= 5 * standard_error + 1e-6).all())
    # The stated variance is unbiased for Var_π(R̂)/K: its replica mean within 5 of its SEs.
    stated_se = stated.std(1) / REPLICAS**0.5
    assert bool(((stated.mean(1) - variance / samples).abs() <= 5 * stated_se + 1e-6).all())
    # The estimates' own spread shrinks as 1/K: their sample variance is Var_π(R̂)/K within 5
    # standard errors of a sample variance, from the exact 2nd and 4th moments of a K-mean.
    var_k = variance / samples
    fourth_k = (fourth + 3 * (samples - 1) * variance**2) / samples**3
    n = REPLICAS
    spread_se = ((fourth_k - var_k**2 * (n - 3) / (n - 1)) / n).clamp(min=0).sqrt()
    assert bool(((values.var(1) - var_k).abs() <= 5 * spread_se + 1e-6).all())


@pytest.mark.parametrize("block_cells", [None, 5])  # 5: one row of float64 at a time
def test_sampled_baseline_agrees_with_the_exact_sum_and_is_seeded(
        block_cells: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if block_cells is not None:
        monkeypatch.setattr("trainers.sft._FLOAT64_BLOCK_CELLS", block_cells)
    world = TableWorld(
        torch.tensor([[10.0, 0.5, -1.0, 2.0, 0.0]]), torch.tensor([[100.0, 1.0, 5.0, 3.0, 2.0]]))
    events = world.events(1)
    exact = reward_model_baseline(world.reward_fn, world.reference, events)
    assert float(exact) == pytest.approx(float(world.moments()[0]), abs=1e-5)
    big = reward_model_baseline(world.reward_fn, world.reference, world.events(4),
                                samples=50_000, generator=torch.Generator().manual_seed(0))
    assert big.shape == (4,)
    assert torch.allclose(big, exact.expand(4), atol=0.03)
    first, second = (sampled_reward_model_baseline(
        world.reward_fn, world.reference, world.events(50), 4,
        generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first.value, second.value) and torch.equal(first.variance,
                                                                  second.variance)
    with pytest.raises(ValueError, match="samples"):
        sampled_reward_model_baseline(world.reward_fn, world.reference, events, 1)


def test_a_sft_config_takes_one_way_to_cut_the_baselines_cost() -> None:
    assert ASFTConfig().baseline_samples == 0
    with pytest.raises(ValueError, match="baseline_top_k"):
        ASFTConfig(baseline_samples=16, baseline_top_k=20)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.integers(1, 70), st.sampled_from([0, 4]))
def test_advantages_unrolled_a_few_rows_at_a_time_equal_the_whole_unroll(
    events_per_chunk: int, batch_size: int, samples: int
) -> None:
    # a_sft_advantages unrolls sequence rows chunk by chunk (a 10M-event log unrolled whole took
    # the process past 24 GiB); chunks of whole batches keep every batch, so every value and
    # every draw of the sampled baseline, as they were
    generator = torch.Generator().manual_seed(events_per_chunk)
    items = torch.randint(0, 31, (60, 9), generator=generator)
    items[:, 0] = torch.randint(1, 31, (60,), generator=generator)
    data = sequence_data(items, torch.rand(items.shape, generator=generator))
    data["users"] = torch.arange(60)
    reference, reward = _tiny_reference(), _history_reward
    whole = sequences_to_events(data)
    chunks = list(_event_chunks(data, batch_size, events_per_chunk))
    assert all(int(c["targets"].shape[0]) % batch_size == 0 for c in chunks[:-1])
    for key, value in whole.items():
        assert torch.equal(torch.cat([c[key] for c in chunks]), value), key
    draws = None if not samples else torch.Generator().manual_seed(1)
    expected = whole["target_rewards"] - reward_model_baseline(
        reward, reference, whole, batch_size, 5, samples, draws)
    default = sft._EVENTS_PER_CHUNK
    sft._EVENTS_PER_CHUNK = events_per_chunk
    try:
        got = a_sft_advantages(data, reward, reference, 5, batch_size, samples,
                               None if not samples else torch.Generator().manual_seed(1))
    finally:
        sft._EVENTS_PER_CHUNK = default
    grid = torch.zeros_like(data["rewards"])
    grid[:, 1:][data["items"][:, 1:] != 0] = expected
    assert torch.equal(got["advantages"], grid)


def test_a_sft_computes_b_on_the_rows_it_draws_only() -> None:
    """A short A-SFT run computes b(s) on the rows its batches draw (`drawn_rows`), not on every
    event: those rows' advantages are the whole-data ones, the rest NaN, which the loss refuses
    if a run draws one -- so a run whose precomputed rows do not cover its draws fails loudly."""
    from trainers import train_a_sft
    from trainers.loop import drawn_rows

    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 31, (80, 9), generator=generator)
    items[::5, :4] = 0
    data = sequence_data(items, torch.rand(items.shape, generator=generator) * 4 + 1)
    data["users"] = torch.arange(80)
    reference, reward = _tiny_reference(), _history_reward
    config = ASFTConfig(beta=0.5, batch_size=8, max_steps=3, seed=1, progress=False,
                        baseline_top_k=5)
    rows = drawn_rows(80, config)
    assert 0 < rows.numel() <= 24
    whole = a_sft_advantages(data, reward, reference, 5)["advantages"]
    part = a_sft_advantages(data, reward, reference, 5, rows=rows)["advantages"]
    assert torch.allclose(part[rows], whole[rows], atol=1e-5)
    others = torch.ones(80, dtype=torch.bool)
    others[rows] = False
    assert bool(part[others].isnan().all())

    def model() -> SequentialRecommender:
        torch.manual_seed(2)
        return SequentialRecommender(ModelConfig(n_items=30, hidden=8, n_blocks=1, n_heads=1,
                                                 max_len=8, dropout=0.0))

    inline, precomputed = model(), model()
    train_a_sft(inline, data, config, reward_fn=reward, reference=reference)
    # the inline run computes exactly `part` (whole-data values differ in the last bits, which
    # Adam's first steps amplify on near-zero gradients), and draws none of its NaN rows
    train_a_sft(precomputed, {**data, "advantages": part}, config)
    for a, b in zip(inline.state_dict().values(), precomputed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    longer = dataclasses.replace(config, max_steps=12)
    with pytest.raises(ValueError, match="without a precomputed advantage"):
        train_a_sft(model(), {**data, "advantages": part}, longer)
