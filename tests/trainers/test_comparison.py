"""DPO, IPO, CQL and ReRe-style GRPO do what their math says, on small cases."""

import copy
import math
from collections.abc import Callable

import pytest
import torch

from trainers import (
    Context,
    CQLConfig,
    DPOConfig,
    GRPOConfig,
    IPOConfig,
    SequentialRecommender,
    SFTConfig,
    context_data,
    event_data,
    train_cql,
    train_dpo,
    train_grpo,
    train_ipo,
    train_sft,
)
from trainers.cql import cql_loss
from trainers.dpo import dpo_loss, ipo_loss, select_pairs
from trainers.ensemble import member_spread, reward_interval
from trainers.grpo import group_advantages, rere_rewards
from trainers.ppo import clipped_policy_loss, masked_log_policy

Make = Callable[..., SequentialRecommender]
HISTORY = [1, 2, 3, 4]


def _contexts(n: int) -> Context:
    return Context(torch.zeros(n, dtype=torch.long), torch.tensor(HISTORY).expand(n, -1),
                   torch.full((n, len(HISTORY)), 3.0))


def _probabilities(model: SequentialRecommender) -> torch.Tensor:
    with torch.no_grad():
        return masked_log_policy(model.eval(), _contexts(1), True)[0].exp()


class _ItemEnsemble:
    """Members agree that items 5-8 are worth 5 and items 9-12 worth 1 (spread 0.1)."""

    def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        base = torch.where(items <= 8, 5.0, 1.0)
        offsets = torch.tensor([-0.1, 0.0, 0.1])[:, None, None]
        return base[None] + offsets

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.members(context, items).mean(0)


GOOD, BAD = list(range(5, 9)), list(range(9, 13))


def test_rejection_sampling_keeps_only_pairs_whose_intervals_separate() -> None:
    # [M, B, K]: item 11 is 5 ± 1.633 (population std), item 12 is 3 ± 0.408, 13 is 2 ± 0.408
    members = torch.tensor([[[3.0, 2.5, 1.5]], [[5.0, 3.0, 2.0]], [[7.0, 3.5, 2.5]]])
    spread = member_spread(members)
    assert torch.allclose(spread, members.std(0, unbiased=False))
    assert torch.allclose(spread[0, 0], torch.tensor((8 / 3) ** 0.5))
    candidates = torch.tensor([[11, 12, 13]])
    mean = members.mean(0)
    # z = 1: 11's lower bound 3.37 is the highest and clears 13's upper bound 2.41: kept.
    # z = 2: 12's lower bound 2.18 is now the highest, below 13's upper bound 2.82: dropped.
    for z, expected in ((1.0, (11, 13, True)), (2.0, (12, 13, False))):
        chosen, rejected, keep = select_pairs(candidates, mean - z * spread, mean + z * spread)
        assert (int(chosen), int(rejected), bool(keep)) == expected

    class Ensemble:
        def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
            return members

    _, low, high = reward_interval(Ensemble(), _contexts(1), candidates, 1.0)
    assert torch.allclose(low, mean - spread) and torch.allclose(high, mean + spread)


def test_dpo_moves_probability_from_rejected_to_chosen_items(make_model: Make) -> None:
    model = make_model(n_items=12)
    reference = copy.deepcopy(model)
    before = _probabilities(model)
    result = train_dpo(model, context_data(_contexts(32)),
                       DPOConfig(lr=1e-2, batch_size=32, max_steps=25, n_candidates=4,
                                 progress=False),
                       reward_fn=_ItemEnsemble(), reference=reference)
    after = _probabilities(model)
    assert result.steps == 25
    assert float(before[GOOD].sum()) < 0.6 and float(after[GOOD].sum()) > 0.9
    assert bool((after[BAD] < before[BAD]).all())
    assert torch.equal(_probabilities(reference), before)  # π_ref is frozen


def test_ipo_loss_is_minimized_at_the_margin_one_over_two_beta() -> None:
    beta = 0.25
    margins = torch.linspace(-2.0, 6.0, 8001)
    assert float(margins[ipo_loss(margins, beta).argmin()]) == pytest.approx(1 / (2 * beta))
    h = torch.tensor([0.0], requires_grad=True)
    optimizer = torch.optim.SGD([h], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        ipo_loss(h, beta).sum().backward()
        optimizer.step()
    assert float(h.detach()) == pytest.approx(2.0, abs=1e-4)
    # DPO's loss has no minimum: it keeps rewarding a larger margin.
    assert bool((dpo_loss(margins[1:], beta) < dpo_loss(margins[:-1], beta)).all())
    assert float(dpo_loss(torch.tensor(0.0), beta)) == pytest.approx(math.log(2))


def test_ipo_stops_at_its_margin_where_dpo_keeps_going(make_model: Make) -> None:
    """Trained on the same separable preferences, IPO's log-ratio margin between the chosen and
    the rejected items settles near 1/(2β); DPO's goes past it."""
    beta = 0.5  # target margin 1
    margins = {}
    for train, config in ((train_ipo, IPOConfig), (train_dpo, DPOConfig)):
        model = make_model(n_items=12)
        reference = copy.deepcopy(model)
        train(model, context_data(_contexts(32)),
              config(lr=1e-2, batch_size=32, max_steps=60, n_candidates=8, beta=beta,
                     progress=False),
              reward_fn=_ItemEnsemble(), reference=reference)
        log_ratio = (_probabilities(model) / _probabilities(reference)).log()
        margins[train.__name__] = float(log_ratio[GOOD].mean() - log_ratio[BAD].mean())
    assert margins["train_ipo"] == pytest.approx(1 / (2 * beta), abs=0.25)
    assert margins["train_dpo"] > 1.5 * margins["train_ipo"]


def _cql_events() -> dict[str, torch.Tensor]:
    """One history; the log shows only items 7 (reward 5) and 9 (reward 1)."""
    n = 30
    targets = torch.tensor([7] * 10 + [9] * 20)
    return event_data(_contexts(n), targets, torch.where(targets == 7, 5.0, 1.0))


def test_cql_loss_follows_its_formula() -> None:
    q = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    loss = cql_loss(q, torch.tensor([2, 0]), torch.tensor([2.5, 1.5]), alpha=0.5)
    expected = [(3 - 2.5) ** 2 + 0.5 * (math.log(math.e + math.e**2 + math.e**3) - 3),
                (0.5 - 1.5) ** 2 + 0.5 * (math.log(math.e**0.5 + 1 + math.e**-1) - 0.5)]
    assert loss.tolist() == pytest.approx(expected)


def test_cql_lowers_q_of_items_never_logged(make_model: Make) -> None:
    never = [5, 6, 8, 10, 11, 12]
    q_values = {}
    for alpha in (0.0, 1.0):
        model = make_model(n_items=12)
        if alpha == 0.0:
            with torch.no_grad():
                initial = model.eval()(_contexts(1))[0]
        train_cql(model, _cql_events(),
                  CQLConfig(alpha=alpha, lr=1e-2, batch_size=30, max_steps=80, progress=False))
        with torch.no_grad():
            q_values[alpha] = model.eval()(_contexts(1))[0]  # τ = 1: the logits are Q
    plain_q, conservative_q = q_values[0.0], q_values[1.0]
    # α = 0 is reward regression: the logged items' Q fit their rewards.
    assert float(plain_q[7]) == pytest.approx(5.0, abs=0.2)
    assert float(plain_q[9]) == pytest.approx(1.0, abs=0.2)
    assert float(conservative_q[7]) > float(conservative_q[9]) + 1.0  # still ordered by reward
    conservative, plain = conservative_q[never], plain_q[never]
    assert float(conservative.mean()) < float(plain.mean()) - 3.0
    assert float(conservative.mean()) < float(initial[never].mean()) - 3.0
    assert bool((conservative < float(conservative_q[9])).all())  # below even the worst logged


def test_rere_rewards_and_group_advantages() -> None:
    discount = [1 / math.log2(i + 2) for i in range(4)]
    total = sum(discount)
    rewards = rere_rewards(torch.tensor([[3, 8, 5, 6], [1, 2, 3, 4]]), torch.tensor([5, 9]))
    assert rewards[0].tolist() == pytest.approx(
        [-discount[0] / total, -discount[1] / total, 1.0, -discount[3] / total])
    assert rewards[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # target missed: no signal
    advantages = group_advantages(rewards)
    assert advantages[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert float(advantages[0].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(advantages[0].std()) == pytest.approx(1.0, abs=1e-4)


def test_grpo_step_keeps_the_target_first_and_pushes_top_negatives_down_most() -> None:
    """On free logits, the descent direction of the GRPO loss with the target at beam rank 0
    raises the target and lowers each negative by more the higher its rank."""
    logits = torch.tensor([[-1e9, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5]], requires_grad=True)
    log_policy = torch.log_softmax(logits, dim=1)
    candidates = log_policy.detach().topk(5, dim=1).indices  # items 1..5, target 1 first
    advantages = group_advantages(rere_rewards(candidates, torch.tensor([1])))
    total, normalizer, scalars = clipped_policy_loss(
        log_policy, candidates, log_policy.detach().gather(1, candidates), advantages,
        log_policy.detach(), clip_eps=0.2, kl_coef=1e-3,
    )
    (total / normalizer).backward()
    step = -logits.grad[0, 1:]  # descent direction per item
    assert float(scalars["kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(step[0]) > 0  # the target goes up
    negatives = step[1:5]
    assert bool((negatives < 0).all())
    assert bool((negatives[:-1] < negatives[1:]).all())  # rank 1 falls most, rank 4 least
    assert float(step[5]) == pytest.approx(0.0, abs=1e-6)  # not a candidate: untouched


def test_grpo_training_leaves_a_first_target_first(make_model: Make) -> None:
    events = event_data(_contexts(32), torch.full((32,), 7), torch.full((32,), 5.0))
    sft = make_model(n_items=12)
    train_sft(sft, events, SFTConfig(lr=1e-2, batch_size=32, max_steps=3, progress=False))
    before = _probabilities(sft)
    assert int(before.argmax()) == 7 and float(before[7]) < 0.9
    negatives = before.argsort(descending=True)[1:4]
    model = copy.deepcopy(sft)
    result = train_grpo(model, events, GRPOConfig(lr=3e-3, batch_size=32, max_steps=10,
                                                  group_size=4, progress=False),
                        reference=sft)
    after = _probabilities(model)
    assert result.steps == 10
    assert int(after.argmax()) == 7 and float(after[7]) > float(before[7])
    assert bool((after[negatives] < before[negatives]).all())
