"""EnsembleJudge: slate and rollout values, member spread, target-reward filter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from evaluators.judge import EnsembleJudge

N_ITEMS = 20  # ids 1..20, column 0 = padding


@dataclass(frozen=True)
class Ctx:
    users: torch.Tensor
    history_items: torch.Tensor
    history_rewards: torch.Tensor


class LinearEnsemble:
    """Member m predicts reward scale[m] * item / N_ITEMS."""

    def __init__(self, scales: list[float]) -> None:
        self.scales = torch.tensor(scales, dtype=torch.float32)

    def members(self, context: Ctx, items: torch.Tensor) -> torch.Tensor:
        return self.scales[:, None, None] * items.float()[None] / N_ITEMS

    def __call__(self, context: Ctx, items: torch.Tensor) -> torch.Tensor:
        return self.members(context, items).mean(0)


def prefer_high_ids(context: Ctx) -> torch.Tensor:
    return torch.arange(N_ITEMS + 1, dtype=torch.float32).repeat(len(context.users), 1)


def next_after_last(context: Ctx) -> torch.Tensor:
    """Scores peak at (last history item + 1): a rollout must see its own recommendations."""
    last = context.history_items[:, -1:].float()
    return -(torch.arange(N_ITEMS + 1).float()[None] - last - 1).abs()


def _context(n_users: int = 6) -> Ctx:
    hist = torch.zeros(n_users, 4, dtype=torch.long)
    hist[:, -1] = torch.arange(1, n_users + 1)  # user u has seen item u + 1
    return Ctx(torch.arange(n_users), hist, torch.ones(n_users, 4))


def test_slate_value_is_the_discounted_mean_over_members_and_users() -> None:
    ensemble = LinearEnsemble([0.9, 1.0, 1.1])
    judge = EnsembleJudge(ensemble, mode="slate", k=3, gamma=0.5, n_resamples=500)
    result = judge.evaluate(prefer_high_ids, _context())
    w = np.array([1, 0.5, 0.25]) / 1.75
    expected = (w * np.array([20, 19, 18]) / N_ITEMS).sum()  # nobody has seen 18..20
    np.testing.assert_allclose(result.members, [0.9 * expected, expected, 1.1 * expected])
    assert result.value.value == pytest.approx(expected)
    assert result.relative_spread == pytest.approx(np.std([0.9, 1.0, 1.1], ddof=1))
    assert set(result.as_dict()) >= {"value", "members", "relative_spread", "n_users"}
    # every user gets the same slate, so the interval over users has zero width
    assert result.as_dict()["value"] == pytest.approx(
        {"value": expected, "low": expected, "high": expected}
    )


def test_slate_excludes_history_and_padding() -> None:
    ctx = _context()
    ctx = Ctx(ctx.users, torch.full((6, 4), 20), ctx.history_rewards)  # everyone has seen 20
    result = EnsembleJudge(LinearEnsemble([1.0]), k=1, n_resamples=200).evaluate(
        prefer_high_ids, ctx
    )
    np.testing.assert_allclose(result.per_user, 19 / N_ITEMS)
    assert result.relative_spread == 0.0


class CheckedEnsemble(LinearEnsemble):
    """Refuses the padding id, as a world's true reward does."""

    def members(self, context: Ctx, items: torch.Tensor) -> torch.Tensor:
        assert (items >= 1).all(), "the padding item was scored"
        return super().members(context, items)


def test_a_user_with_fewer_items_left_than_k_gets_the_shorter_slate() -> None:
    # user 0 has seen items 1..18: only 19 and 20 are left for a slate of k = 5; user 1 has seen
    # nothing of note and gets a full slate
    hist = torch.zeros(2, 18, dtype=torch.long)
    hist[0] = torch.arange(1, 19)
    ctx = Ctx(torch.arange(2), hist, torch.ones(2, 18))
    judge = EnsembleJudge(CheckedEnsemble([1.0]), k=5, gamma=0.5, n_resamples=200)
    result = judge.evaluate(prefer_high_ids, ctx)
    short = np.array([1, 0.5]) / 1.5
    full = np.array([1, 0.5, 0.25, 0.125, 0.0625]) / 1.9375
    np.testing.assert_allclose(result.per_user, [(short * [20, 19]).sum() / N_ITEMS,
                                                 (full * [20, 19, 18, 17, 16]).sum() / N_ITEMS])
    everything = Ctx(torch.arange(1), torch.arange(1, N_ITEMS + 1)[None], torch.ones(1, N_ITEMS))
    with pytest.raises(ValueError, match="no item left"):
        judge.evaluate(prefer_high_ids, everything)


def test_rollout_appends_each_recommendation_to_the_history() -> None:
    judge = EnsembleJudge(
        LinearEnsemble([1.0]), mode="rollout", horizon=3, gamma=1.0, n_resamples=200
    )
    result = judge.evaluate(next_after_last, _context(), true_reward=LinearEnsemble([2.0]))
    # user u last saw u + 1, so the rollout recommends u + 2, u + 3, u + 4
    expected = np.array([(u + 3) / N_ITEMS for u in range(6)])
    np.testing.assert_allclose(result.per_user, expected)
    np.testing.assert_allclose(result.true_per_user, 2 * expected)
    assert result.true_value is not None and "true_value" in result.as_dict()


def test_batches_of_contexts_give_the_same_result() -> None:
    judge = EnsembleJudge(
        LinearEnsemble([0.9, 1.1]), mode="rollout", horizon=2, batch_size=4, n_resamples=300
    )
    whole = judge.evaluate(next_after_last, _context())
    ctx = _context()
    short = Ctx(ctx.users[3:], ctx.history_items[3:, 2:], ctx.history_rewards[3:, 2:])
    first = Ctx(ctx.users[:3], ctx.history_items[:3], ctx.history_rewards[:3])
    parts = judge.evaluate(next_after_last, [first, short])  # short: left-padded back to 4
    np.testing.assert_allclose(parts.per_user, whole.per_user)
    assert parts.value == whole.value


@dataclass(frozen=True)
class TimedCtx:
    """A context with a fourth per-user field (as the trainers' `history_timestamps`)."""

    users: torch.Tensor
    history_items: torch.Tensor
    history_rewards: torch.Tensor
    history_timestamps: torch.Tensor


def prefer_recent_gap(context: TimedCtx) -> torch.Tensor:
    """Scores item (last gap mod N_ITEMS) + 1 highest: the policy reads the extra field, which
    must stay aligned with its rows through the judge's filtering, batching and rollout."""
    assert context.history_timestamps.shape == context.history_items.shape
    gap = context.history_timestamps[:, -1] - context.history_timestamps[:, -2]
    best = gap % N_ITEMS + 1
    return -(torch.arange(N_ITEMS + 1)[None] - best[:, None]).abs().float()


def test_extra_context_fields_travel_with_their_rows() -> None:
    ctx = _context()
    times = torch.zeros(6, 4, dtype=torch.long)
    times[:, -1] = torch.tensor([3, 7, 11, 5, 9, 13])  # gap to the previous event (time 0)
    timed = TimedCtx(ctx.users, ctx.history_items, ctx.history_rewards, times)
    rewards = torch.tensor([1.0, 5.0, 4.0, 2.0, 5.0, 3.0])
    judge = EnsembleJudge(LinearEnsemble([1.0]), k=1, batch_size=2, n_resamples=200)
    result = judge.evaluate(prefer_recent_gap, timed, rewards, min_target_reward=4.0)
    # users 1, 2, 4 (gaps 7, 11, 9) get items 8, 12, 10 -- none of them seen
    np.testing.assert_allclose(result.per_user, np.array([8, 12, 10]) / N_ITEMS)
    parts = judge.evaluate(prefer_recent_gap, [timed, timed])
    np.testing.assert_allclose(parts.per_user, np.tile(np.array([4, 8, 12, 6, 10, 14]), 2)
                               / N_ITEMS)
    # a rollout's recommendation takes the latest time, so the next step's gap is 0: item 1,
    # or item 2 for user 0, who has seen item 1; the value is the mean of the two steps
    rollout = EnsembleJudge(LinearEnsemble([1.0]), mode="rollout", horizon=2, gamma=1.0,
                            n_resamples=200).evaluate(prefer_recent_gap, timed)
    second = np.array([2, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(rollout.per_user, (np.array([4, 8, 12, 6, 10, 14]) + second)
                               / 2 / N_ITEMS, rtol=1e-6)


def test_high_target_reward_filter() -> None:
    judge = EnsembleJudge(LinearEnsemble([1.0]), k=1, n_resamples=200)
    rewards = torch.tensor([1.0, 5.0, 4.0, 2.0, 5.0, 3.0])
    result = judge.evaluate(prefer_high_ids, _context(), rewards, min_target_reward=4.0)
    assert result.users.tolist() == [1, 2, 4]
    median = judge.evaluate(prefer_high_ids, _context(), rewards, min_target_reward="median")
    assert median.users.tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="needs target_rewards"):
        judge.evaluate(prefer_high_ids, _context(), min_target_reward=4.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        EnsembleJudge(LinearEnsemble([1.0]), mode="beam")
    with pytest.raises(ValueError, match="gamma"):
        EnsembleJudge(LinearEnsemble([1.0]), gamma=0.0)
    with pytest.raises(TypeError, match="members"):
        EnsembleJudge(lambda c, i: i.float())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_block_mib"):
        EnsembleJudge(LinearEnsemble([1.0]), max_block_mib=0.0)


class RecordingPolicy:
    """Scores that depend only on the user and the history (so batching cannot change them);
    records how many users each call scored."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.items = torch.randn(N_ITEMS + 1, 3, generator=torch.Generator().manual_seed(1))

    def __call__(self, context: Ctx) -> torch.Tensor:
        self.calls.append(int(context.users.shape[0]))
        users = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))[context.users]
        users = users + 0.1 * context.history_items[:, -1:].float()
        return users @ self.items.T


@pytest.mark.parametrize("mode", ["slate", "rollout"])
def test_a_memory_bound_on_the_score_block_changes_nothing_but_the_calls(mode: str) -> None:
    ensemble, context = LinearEnsemble([0.8, 1.0, 1.3]), _context(40)
    today = EnsembleJudge(ensemble, mode=mode, k=4, n_resamples=300)
    bounded = EnsembleJudge(ensemble, mode=mode, k=4, n_resamples=300,
                            max_block_mib=3 * 8 * (N_ITEMS + 1) / 2**20)
    assert bounded.users_per_call(N_ITEMS + 1) == 3 and today.users_per_call(N_ITEMS + 1) == 1024
    assert today.users_per_call(10**6 + 1) == 67  # the documented figure at 10^6 items
    policy = RecordingPolicy()
    expected = today.evaluate(policy, context, true_reward=ensemble)
    policy.calls.clear()
    result = bounded.evaluate(policy, context, true_reward=ensemble)
    assert max(policy.calls) == 3 and sum(policy.calls) == 40 * (1 if mode == "slate" else 3)
    np.testing.assert_array_equal(result.per_user, expected.per_user)
    np.testing.assert_array_equal(result.true_per_user, expected.true_per_user)
    assert result.as_dict() == expected.as_dict()
