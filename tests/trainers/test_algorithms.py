import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from trainers import (
    ALGORITHMS,
    ASFTConfig,
    Context,
    ExpSFTConfig,
    ModelConfig,
    PPOConfig,
    RewardWeightedConfig,
    SequentialRecommender,
    SFTConfig,
    TrainConfig,
    context_data,
    event_data,
    policy_scores,
    train_a_sft,
    train_exp_sft,
    train_ppo,
    train_reward_weighted,
    train_sft,
)
from trainers.data import NextItemTargets, TensorData, batch_context, sequences_to_events
from trainers.ppo import clipped_policy_loss, masked_log_policy, pessimistic_reward
from trainers.sft import a_sft_loss, exp_sft_loss, reward_model_baseline, reward_weighted_loss
from trainers.testing import NoisyEnsemble, ToyWorld, expected_reward, top_k_true_reward

Make = Callable[..., SequentialRecommender]


def _two_choice_events() -> TensorData:
    """One history; the logged next item is 7 (reward 5) ten times and 9 (reward 1) twenty."""
    n = 30
    history = torch.tensor([1, 2, 3, 4]).expand(n, -1)
    targets = torch.tensor([7] * 10 + [9] * 20)
    rewards = torch.tensor([5.0] * 10 + [1.0] * 20)
    return event_data(Context(torch.zeros(n, dtype=torch.long), history, torch.full((n, 4), 3.0)),
                      targets, rewards)


def _probabilities(model: SequentialRecommender, items: list[int]) -> list[float]:
    context = Context(torch.zeros(1, dtype=torch.long), torch.tensor([[1, 2, 3, 4]]),
                      torch.full((1, 4), 3.0))
    with torch.no_grad():
        probs = torch.softmax(model.eval()(context), dim=1)[0]
    return [float(probs[item]) for item in items]


def test_registry_names_every_algorithm() -> None:
    assert set(ALGORITHMS) == {"sft", "rw-bc", "exp-sft", "a-sft", "ppo", "dpo", "ipo", "cql",
                               "grpo"}
    for config_class, train in ALGORITHMS.values():
        assert issubclass(config_class, TrainConfig) and callable(train)


def test_exp_sft_with_small_lambda_moves_mass_to_the_best_logged_item(make_model: Make) -> None:
    settings = dict(lr=1e-2, batch_size=30, max_steps=60, progress=False)
    sft = make_model(n_items=12)
    train_sft(sft, _two_choice_events(), SFTConfig(**settings))  # type: ignore[arg-type]
    good, bad = _probabilities(sft, [7, 9])
    assert bad > 1.5 * good  # cloning follows the logging frequencies (1:2)
    exp = make_model(n_items=12)
    train_exp_sft(exp, _two_choice_events(), ExpSFTConfig(lam=0.5, **settings))  # type: ignore[arg-type]
    good, bad = _probabilities(exp, [7, 9])
    assert good > 0.9 and bad < 0.05  # weights e^10 : e^2 per event


def _same_training(make_model: Make, world_data: TensorData, train: Callable[..., object],
                   config: TrainConfig) -> bool:
    reference = make_model(dropout=0.1)
    train_sft(reference, world_data, SFTConfig(batch_size=32, max_steps=8, progress=False))
    other = make_model(dropout=0.1)
    train(other, world_data, config)
    return all(torch.allclose(a, b, atol=1e-5) for a, b in
               zip(reference.state_dict().values(), other.state_dict().values(), strict=True))


def test_exp_sft_with_infinite_lambda_is_sft(make_model: Make, world_data: TensorData) -> None:
    config = ExpSFTConfig(lam=float("inf"), batch_size=32, max_steps=8, progress=False)
    assert _same_training(make_model, world_data, train_exp_sft, config)
    config = ExpSFTConfig(lam=1.0, batch_size=32, max_steps=8, progress=False)
    assert not _same_training(make_model, world_data, train_exp_sft, config)


def test_a_sft_with_infinite_beta_is_sft(make_model: Make, world_data: TensorData) -> None:
    config = ASFTConfig(beta=float("inf"), batch_size=32, max_steps=8, progress=False)
    assert _same_training(make_model, world_data, train_a_sft, config)
    config = ASFTConfig(beta=0.5, batch_size=32, max_steps=8, progress=False)
    assert not _same_training(make_model, world_data, train_a_sft, config)


def test_reward_weighted_bc_with_constant_reward_is_sft(make_model: Make,
                                                       world_data: TensorData) -> None:
    constant = {**world_data, "rewards": torch.full_like(world_data["rewards"], 4.0)}
    reference = make_model()
    train_sft(reference, constant, SFTConfig(batch_size=32, max_steps=6, progress=False))
    other = make_model()
    train_reward_weighted(other, constant, RewardWeightedConfig(batch_size=32, max_steps=6,
                                                                progress=False))
    for a, b in zip(reference.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_weighted_losses_follow_their_formulas() -> None:
    log_prob = torch.tensor([-1.0, -2.0, -3.0])
    reward = torch.tensor([5.0, 1.0, 3.0])
    history_mean = torch.tensor([4.0, 4.0, 3.0])
    targets = NextItemTargets(log_prob, reward, history_mean)
    total, norm = reward_weighted_loss(targets, RewardWeightedConfig(min_reward=2.0))
    assert float(total / norm) == pytest.approx((3 * 1 + 0 * 2 + 1 * 3) / 4)
    total, norm = exp_sft_loss(targets, ExpSFTConfig(lam=2.0))
    weights = np.exp(reward.numpy() / 2.0)
    assert float(total / norm) == pytest.approx(float(weights @ [1, 2, 3] / weights.sum()))
    capped = exp_sft_loss(targets, ExpSFTConfig(lam=0.1, max_weight=1.5))
    assert float(capped[1]) <= 3 * 1.5
    total, norm = a_sft_loss(targets, ASFTConfig(beta=1.0, max_weight=2.0))
    weights = np.minimum(np.exp([1.0, -3.0, 0.0]), 2.0)  # A = r - user mean
    assert float(total / norm) == pytest.approx(float(weights @ [1, 2, 3] / 3))
    given = NextItemTargets(log_prob, reward, history_mean, advantage=torch.zeros(3))
    total, norm = a_sft_loss(given, ASFTConfig(beta=0.1))
    assert float(total / norm) == pytest.approx(2.0)  # precomputed advantages win


def test_reward_model_baseline_is_the_reference_expectation(make_model: Make,
                                                           world: ToyWorld,
                                                           world_data: TensorData) -> None:
    reference = make_model().eval()
    context = world.contexts(world_data).index(slice(0, 5))
    events = {"users": context.users, "history_items": context.history_items,
              "history_rewards": context.history_rewards}
    baseline = reward_model_baseline(world.true_reward, reference, events, batch_size=2)
    log_policy = torch.log_softmax(reference(context), dim=1)
    expected = expected_reward(log_policy, context, world.true_reward)
    assert torch.allclose(baseline, expected, atol=1e-5)
    # top-k: the whole catalog again when k covers it; with k = 1, R̂ of π_ref's argmax
    n_items = log_policy.shape[1] - 1
    full = reward_model_baseline(world.true_reward, reference, events, top_k=n_items)
    assert torch.allclose(full, expected, atol=1e-5)
    argmax = log_policy[:, 1:].argmax(1, keepdim=True) + 1
    top1 = reward_model_baseline(world.true_reward, reference, events, top_k=1)
    assert torch.allclose(top1, world.true_reward(context, argmax)[:, 0], atol=1e-6)
    # in between: a renormalized expectation, so within the range of the top-k rewards
    top5 = reward_model_baseline(world.true_reward, reference, events, top_k=5)
    items = log_policy[:, 1:].topk(5, dim=1).indices + 1
    rewards = world.true_reward(context, items)
    low, high = rewards.min(1).values - 1e-6, rewards.max(1).values + 1e-6
    assert bool(((top5 >= low) & (top5 <= high)).all())


def test_algorithms_refuse_inputs_they_cannot_use(make_model: Make,
                                                  world: ToyWorld,
                                                  world_data: TensorData) -> None:
    with pytest.raises(ValueError, match="no reward model"):
        train_exp_sft(make_model(), world_data, reward_fn=world.true_reward)
    with pytest.raises(ValueError, match="needs a reward_fn"):
        train_ppo(make_model(), world_data)
    with pytest.raises(ValueError, match="lam"):
        train_exp_sft(make_model(), world_data, ExpSFTConfig(lam=0.0))


def test_pessimism_uses_ensemble_members() -> None:
    class Ensemble:
        def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
            return self.members(context, items).mean(0)

        def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
            return torch.stack([items.float(), items.float() + 2, items.float() + 4])

    context = Context(torch.zeros(1, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                      torch.ones(1, 2))
    items = torch.tensor([[3, 5]])
    assert torch.allclose(pessimistic_reward(Ensemble(), context, items, 0.0),
                          torch.tensor([[5.0, 7.0]]))
    # population std over the members (as rmdiag's RewardEnsemble.spread): sqrt(8/3), not 2
    spread = (8 / 3) ** 0.5
    assert torch.allclose(pessimistic_reward(Ensemble(), context, items, 1.0),
                          torch.tensor([[5.0 - spread, 7.0 - spread]]))
    assert torch.allclose(pessimistic_reward(Ensemble(), context, items, 2.0),
                          torch.tensor([[5.0 - 2 * spread, 7.0 - 2 * spread]]))

    def plain(context: Context, items: torch.Tensor) -> torch.Tensor:
        return items.float()

    assert torch.equal(pessimistic_reward(plain, context, items, 0.0), items.float())
    with pytest.raises(ValueError, match="no members"):
        pessimistic_reward(plain, context, items, 0.5)


def test_pessimism_without_members_is_refused_before_training(make_model: Make,
                                                             world: ToyWorld,
                                                             world_data: TensorData) -> None:
    config = PPOConfig(pessimism=1.0, batch_size=32, max_steps=2, progress=False)
    with pytest.raises(ValueError, match="no members"):
        train_ppo(make_model(), world_data, config, reward_fn=world.true_reward)
    ensemble = NoisyEnsemble(world.true_reward, 60, noise=0.5)
    result = train_ppo(make_model(), world_data, config, reward_fn=ensemble)
    assert result.steps == 2


def test_ppo_clipped_surrogate_and_kl_match_a_hand_computation() -> None:
    """One history, catalog of 3 items (+ padding), G = 3 sampled actions."""
    pi = [0.5, 0.3, 0.2]
    pi_ref = [0.2, 0.3, 0.5]
    pi_old = [0.4, 0.4, 0.2]  # ratios 1.25 (clipped above for A > 0), 0.75 (clipped), 1.0
    actions = [1, 2, 3]
    advantages = [1.0, -2.0, 0.5]
    eps, beta = 0.2, 0.1
    log_policy = torch.log(torch.tensor([[1e-30, *pi]], dtype=torch.float64)).requires_grad_()
    reference = torch.log(torch.tensor([[1e-30, *pi_ref]], dtype=torch.float64))
    old = torch.log(torch.tensor([[pi_old[a - 1] for a in actions]], dtype=torch.float64))
    total, normalizer, scalars = clipped_policy_loss(
        log_policy, torch.tensor([actions]), old, torch.tensor([advantages], dtype=torch.float64),
        reference, eps, beta,
    )
    surrogate = []
    for a, advantage in zip(actions, advantages, strict=True):
        ratio = pi[a - 1] / pi_old[a - 1]
        clipped = min(max(ratio, 1 - eps), 1 + eps)
        surrogate.append(min(ratio * advantage, clipped * advantage))
    assert surrogate == pytest.approx([1.2, -1.6, 0.5])
    kl = sum(p * math.log(p / q) for p, q in zip(pi, pi_ref, strict=True))
    assert float(scalars["kl"]) == pytest.approx(kl, rel=1e-9)
    assert float(normalizer) == 3
    assert float((total / normalizer).detach()) == pytest.approx(-sum(surrogate) / 3 + beta * kl,
                                                                 rel=1e-9)
    assert float(scalars["clip_fraction"]) == pytest.approx(2 / 3)
    # Clipped actions give no gradient through their ratio: only the KL term reaches them.
    (total / normalizer).backward()
    kl_only = log_policy.detach().clone().requires_grad_()
    (beta * (kl_only.exp() * (kl_only - reference)).sum()).backward()
    grad, kl_grad = log_policy.grad[0], kl_only.grad[0]
    assert float(grad[1]) == pytest.approx(float(kl_grad[1]))  # ratio 1.25 > 1 + ε, A > 0
    assert float(grad[2]) == pytest.approx(float(kl_grad[2]))  # ratio 0.75 < 1 − ε, A < 0
    assert float(grad[3]) == pytest.approx(float(kl_grad[3]) - 0.5 / 3)  # unclipped: −A·ρ / BG


@pytest.fixture(scope="module")
def sft_policy(world_data: TensorData) -> SequentialRecommender:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SequentialRecommender(ModelConfig(n_items=60, hidden=32, n_blocks=1, n_heads=2,
                                              max_len=20, dropout=0.1))
    train_sft(model, world_data, SFTConfig(lr=5e-3, batch_size=64, epochs=20, progress=False))
    return model


def test_ppo_raises_expected_true_reward_with_bounded_kl(
    sft_policy: SequentialRecommender, world: ToyWorld, world_data: TensorData
) -> None:
    context = world.contexts(world_data)
    with torch.no_grad():
        reference = masked_log_policy(sft_policy, context, True)
    before = expected_reward(reference, context, world.true_reward).mean()
    outcomes = {}
    for kl_coef in (0.02, 2.0):
        policy = copy.deepcopy(sft_policy)
        train_ppo(policy, context_data(context), PPOConfig(batch_size=100, epochs=3,
                  kl_coef=kl_coef, progress=False), reward_fn=world.true_reward,
                  reference=sft_policy)
        assert all(p.requires_grad for p in sft_policy.parameters())  # caller's copy untouched
        with torch.no_grad():
            log_policy = masked_log_policy(policy, context, True)
        kl = (log_policy.exp() * (log_policy - reference)).sum(1).mean()
        gain = expected_reward(log_policy, context, world.true_reward).mean() - before
        outcomes[kl_coef] = (float(gain), float(kl))
    assert outcomes[0.02][0] > 0.3 and outcomes[2.0][0] > 0.05
    assert outcomes[0.02][1] < 1.0
    assert outcomes[2.0][1] < 0.8 * outcomes[0.02][1]  # a stronger KL penalty keeps closer to π_ref


def test_reward_aware_sft_beats_sft_on_true_top10_reward(
    sft_policy: SequentialRecommender, world: ToyWorld, world_data: TensorData
) -> None:
    """exp-SFT (observed rewards only) and A-SFT (user-mean baseline) raise the true reward of
    the top-10 over SFT, with a paired 95% bootstrap interval over users above zero."""
    context = world.contexts(world_data)
    sft_reward = top_k_true_reward(world, policy_scores(sft_policy, context), context).numpy()
    settings = dict(lr=5e-3, batch_size=64, epochs=20, progress=False)
    for train, config in ((train_exp_sft, ExpSFTConfig(lam=0.5, **settings)),  # type: ignore[arg-type]
                          (train_a_sft, ASFTConfig(beta=0.5, **settings))):  # type: ignore[arg-type]
        torch.manual_seed(0)
        model = SequentialRecommender(ModelConfig(n_items=60, hidden=32, n_blocks=1, n_heads=2,
                                                  max_len=20, dropout=0.1))
        train(model, world_data, config)
        reward = top_k_true_reward(world, policy_scores(model, context), context).numpy()
        interval = stats.bootstrap((reward - sft_reward,), np.mean, n_resamples=1000,
                                   method="percentile", random_state=0).confidence_interval
        assert interval.low > 0, (train.__name__, interval)


def test_a_sft_with_an_exact_reward_model_is_sft(make_model: Make, world_data: TensorData) -> None:
    """When the reward model predicts every reward exactly and rewards are constant, A = 0 at
    every position of every sequence and A-SFT takes SFT's steps."""
    constant = {**world_data, "rewards": torch.full_like(world_data["rewards"], 4.0)}

    def four(context: Context, items: torch.Tensor) -> torch.Tensor:
        return torch.full(items.shape, 4.0)

    reference = make_model()
    train_sft(reference, constant, SFTConfig(batch_size=32, max_steps=6, progress=False))
    other = make_model()
    train_a_sft(other, constant, ASFTConfig(beta=0.1, batch_size=32, max_steps=6, progress=False),
                reward_fn=four)
    for a, b in zip(reference.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)  # b(s) = 4·Σπ rounds


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_trains_an_hstu_policy_on_timestamped_data(
        algorithm: str, make_model: Make, world: ToyWorld, world_data: TensorData) -> None:
    """The HSTU block reads the data's event times (its time bias) under every trainer: a few
    steps run, move the weights, and the trained policy's scores depend on the times."""
    generator = torch.Generator().manual_seed(0)
    gaps = torch.randint(1, 10**6, world_data["items"].shape, generator=generator)
    data = {**world_data, "timestamps": gaps.cumsum(1) * (world_data["items"] != 0)}
    sft = make_model(n_items=world.config.n_items, architecture="hstu")
    train_sft(sft, data, SFTConfig(batch_size=32, max_steps=3, progress=False))
    config_class, train = ALGORITHMS[algorithm]
    settings = {"batch_size": 32, "max_steps": 3, "progress": False}
    if algorithm == "grpo":
        settings["min_target_reward"] = float(data["rewards"][data["items"] != 0].median())
    extra: dict[str, object] = {}
    if config_class.reward_model != "none":
        extra["reward_fn"] = NoisyEnsemble(world.true_reward, world.config.n_items, n_members=3)
    if config_class.uses_reference:
        extra["reference"] = sft
    model = copy.deepcopy(sft) if algorithm != "sft" else sft
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, data, config_class(**settings), **extra)
    assert result.steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    events = sequences_to_events(data)
    context = batch_context({key: value[:8] for key, value in events.items()})
    untimed = Context(context.users, context.history_items, context.history_rewards)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(context), model(untimed))
