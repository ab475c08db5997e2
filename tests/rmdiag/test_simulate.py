"""Tests of the simulated worlds: determinism, schema, knobs, the oracle and the fitted worlds."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag.simulate import PRESETS, SimulationConfig, World, popularity_gini
from rmdiag.simulate.fit import world_from_interactions
from trainers.protocols import Context, RewardFn

SMALL = SimulationConfig(n_users=150, n_items=120, mean_events=20.0, seed=3)


def small(**overrides: object) -> SimulationConfig:
    return dataclasses.replace(SMALL, **overrides)


def contexts_for_events(
    table: pa.Table, rows: np.ndarray, max_len: int
) -> tuple[Context, torch.Tensor]:
    """Context of each chosen event = that user's earlier events (left-padded), and its item."""
    users = table["user_id"].to_numpy()
    items = table["item_id"].to_numpy()
    rewards = table["reward"].to_numpy()
    first_row = {}
    for row, user in enumerate(users):
        first_row.setdefault(int(user), row)
    history_items = np.zeros((rows.size, max_len), dtype=np.int64)
    history_rewards = np.zeros((rows.size, max_len), dtype=np.float32)
    for n, row in enumerate(rows):
        start = max(first_row[int(users[row])], row - max_len)
        count = row - start
        if count:
            history_items[n, max_len - count :] = items[start:row]
            history_rewards[n, max_len - count :] = rewards[start:row]
    context = Context(
        torch.from_numpy(users[rows].astype(np.int64)),
        torch.from_numpy(history_items),
        torch.from_numpy(history_rewards),
    )
    return context, torch.from_numpy(items[rows].astype(np.int64))[:, None]


# --- determinism and schema -------------------------------------------------------------------


def test_same_seed_gives_identical_tables_and_other_seeds_differ() -> None:
    first, second = World(SMALL).generate(), World(SMALL).generate()
    assert first.equals(second)
    other = World(small(seed=4)).generate()
    assert not first.equals(other)
    assert not np.array_equal(first["item_id"].to_numpy()[:50], other["item_id"].to_numpy()[:50])


def test_schema_types_and_ranges() -> None:
    world = World(SMALL)
    table = world.generate()
    assert table.column_names == ["user_id", "item_id", "timestamp", "reward"]
    assert [field.type for field in table.schema] == [
        pa.int64(),
        pa.int64(),
        pa.int64(),
        pa.float64(),
    ]
    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    rewards = table["reward"].to_numpy()
    assert users.min() >= 1 and users.max() <= SMALL.n_users
    assert set(np.unique(users)) == set(range(1, SMALL.n_users + 1))  # every user has events
    assert items.min() >= 1 and items.max() <= SMALL.n_items
    assert set(np.unique(rewards)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(users) >= 0)  # ordered by user
    lengths = np.bincount(users)[1:]
    assert lengths.min() >= SMALL.min_events and lengths.max() <= SMALL.n_items
    for user in range(1, 30):  # a user never consumes an item twice
        mine = items[users == user]
        assert np.unique(mine).size == mine.size


def test_continuous_rewards_are_clipped_to_the_scale_and_not_integers() -> None:
    rewards = World(small(continuous=True)).generate()["reward"].to_numpy()
    assert rewards.min() >= 1.0 and rewards.max() <= 5.0
    assert np.mean(rewards != np.round(rewards)) > 0.8  # the rest sit at the clipped bounds


def test_timestamps_increase_per_user_within_the_global_range_and_repeat_sometimes() -> None:
    config = small(time_span_days=100)
    table = World(config).generate()
    users, times = table["user_id"].to_numpy(), table["timestamp"].to_numpy()
    same_user = users[1:] == users[:-1]
    steps = np.diff(times)[same_user]
    assert np.all(steps >= 0)
    assert np.mean(steps == 0) > 0.01  # shared timestamps, as in real logs
    assert times.min() >= config.start_time
    assert times.max() <= config.start_time + config.time_span_days * 86_400
    # Users' activity is spread over the range: a mid-range cut-off has users on both sides.
    middle = config.start_time + config.time_span_days * 86_400 // 2
    before = set(users[times < middle].tolist())
    after = set(users[times >= middle].tolist())
    assert len(before) > 20 and len(after) > 20 and len(before & after) > 5


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 40),
    n_items=st.integers(2, 60),
    seed=st.integers(0, 2**40),
    batch=st.integers(1, 50),
    satiation=st.sampled_from([0.0, 0.7]),
    continuous=st.booleans(),
)
def test_batches_concatenate_to_generate_for_any_block_size(
    n_users: int, n_items: int, seed: int, batch: int, satiation: float, continuous: bool
) -> None:
    config = SimulationConfig(
        n_users=n_users,
        n_items=n_items,
        seed=seed,
        mean_events=8.0,
        min_events=1,
        satiation=satiation,
        continuous=continuous,
    )
    world = World(config)
    whole = world.generate(with_expected=True)
    batches = list(world.generate_batches(batch, with_expected=True))
    assert len(batches) == -(-n_users // batch)
    assert pa.concat_tables(batches).combine_chunks().equals(whole)
    assert World(config).generate(with_expected=True).equals(whole)
    users = whole["user_id"].to_numpy()
    assert np.all(np.diff(users) >= 0)
    steps = np.diff(whole["timestamp"].to_numpy())[users[1:] == users[:-1]]
    assert np.all(steps >= 0)


def test_generate_batches_rejects_a_bad_block_size() -> None:
    with pytest.raises(ValueError, match="batch_users"):
        next(World(SMALL).generate_batches(0))


# --- knobs ------------------------------------------------------------------------------------


def test_exposure_concentration_raises_the_popularity_gini() -> None:
    ginis = []
    for concentration in (0.0, 1.0, 2.5):
        world = World(small(n_users=300, exposure_concentration=concentration))
        ginis.append(popularity_gini(world.generate()["item_id"].to_numpy(), world.n_items))
    assert ginis[0] + 0.05 < ginis[1] and ginis[1] + 0.05 < ginis[2]


def test_exploration_brings_rare_items_into_the_log() -> None:
    def exposure(exploration: float) -> tuple[int, float]:
        config = small(n_users=300, n_items=600, exploration=exploration, tail_exposure=0.001)
        world = World(config)
        items = world.generate()["item_id"].to_numpy()
        return np.unique(items).size, popularity_gini(items, world.n_items)

    (seen_without, gini_without), (seen_with, gini_with) = exposure(0.0), exposure(0.3)
    assert seen_with > seen_without and gini_with < gini_without - 0.05


def test_tail_share_leaves_that_share_of_the_catalog_rarely_exposed() -> None:
    config = small(n_users=300, tail_share=0.3, tail_exposure=0.001, exploration=0.0)
    world = World(config)
    counts = np.bincount(world.generate()["item_id"].to_numpy(), minlength=121)[1:]
    tail = world.parameters.exposure_logits[1:] < np.quantile(
        world.parameters.exposure_logits[1:], 0.3
    )
    assert counts[tail].sum() < 0.02 * counts.sum()
    assert counts[tail].mean() < 0.1 * counts[~tail].mean()


def test_noise_knob_sets_the_reward_variance_around_the_true_reward() -> None:
    residual_variance = []
    for noise in (0.0, 0.5, 1.5):
        table = World(small(noise=noise)).generate(with_expected=True)
        residual = table["reward"].to_numpy() - table["expected_reward"].to_numpy()
        residual_variance.append(float(np.var(residual)))
    assert residual_variance[0] == 0.0  # noise-free: the reward is its expectation
    assert residual_variance[0] < residual_variance[1] < residual_variance[2]


def test_continuous_noise_matches_its_standard_deviation_away_from_the_bounds() -> None:
    table = World(small(continuous=True, noise=0.3)).generate(with_expected=True)
    expected = table["expected_reward"].to_numpy()
    interior = (expected > 2.2) & (expected < 3.8)  # clipping rarely reached
    residual = table["reward"].to_numpy()[interior] - expected[interior]
    assert abs(np.std(residual) - 0.3) < 0.02


def test_variance_components_follow_the_config() -> None:
    config = SimulationConfig(
        n_users=3000,
        n_items=3000,
        affinity_scale=1.0,
        observable_share=0.64,
        user_bias_scale=0.5,
        item_quality_scale=0.2,
        noise=0.7,
    )
    parts = World(config).variance_components()
    assert parts["interaction"] == pytest.approx(0.64, rel=0.1)
    assert parts["hidden"] == pytest.approx(0.36)
    assert parts["user_bias"] == pytest.approx(0.25, rel=0.1)
    assert parts["item_quality"] == pytest.approx(0.04, rel=0.1)
    assert parts["noise"] == pytest.approx(0.49)


def test_affinity_makes_the_log_missing_not_at_random() -> None:
    world = World(small(n_users=300))
    logged = world.generate()["reward"].to_numpy().mean()
    random_exposure = world.randomized_exposure(10, seed=0)["reward"].to_numpy().mean()
    assert logged > random_exposure + 0.3
    unbiased = World(small(n_users=300, affinity_weight=0.0, exposure_concentration=0.0))
    logged = unbiased.generate()["reward"].to_numpy().mean()
    random_exposure = unbiased.randomized_exposure(10, seed=0)["reward"].to_numpy().mean()
    assert abs(logged - random_exposure) < 0.1


# --- the oracle -------------------------------------------------------------------------------


def test_true_reward_is_a_reward_fn_that_matches_the_logged_expectation() -> None:
    world = World(small(satiation=1.0))
    assert isinstance(world.true_reward, RewardFn)
    table = world.generate(with_expected=True)
    rows = np.random.default_rng(0).choice(table.num_rows, 300, replace=False)
    context, items = contexts_for_events(table, rows, max_len=world.config.satiation_window)
    oracle = world.true_reward(context, items)
    assert oracle.shape == (300, 1) and oracle.dtype == torch.float32
    np.testing.assert_allclose(
        oracle[:, 0].numpy(), table["expected_reward"].to_numpy()[rows], rtol=1e-6
    )
    # The history matters: without it the satiation penalty disappears.
    empty = Context(context.users, torch.zeros_like(context.history_items), context.history_rewards)
    assert not torch.allclose(world.true_reward(empty, items), oracle)


@pytest.mark.parametrize("continuous", [False, True])
def test_true_reward_is_the_mean_of_many_sampled_rewards(continuous: bool) -> None:
    world = World(small(continuous=continuous, noise=0.9))
    table = world.generate()
    rows = np.array([5, 40, 100, 700, 1500])
    context, _ = contexts_for_events(table, rows, max_len=8)
    items = torch.tensor([[1, 7, 30, 99, 120]] * rows.size)
    oracle = world.true_reward(context, items).double()
    rng = np.random.default_rng(1)
    draws = torch.stack([world.sample_reward(context, items, rng) for _ in range(4000)]).double()
    standard_error = draws.std(0) / np.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - oracle).abs() < 4.5 * standard_error + 1e-6)


def test_item_mean_noise_world_has_no_user_or_history_signal() -> None:
    world = World(SimulationConfig.preset("item_mean_noise", n_users=50, n_items=40))
    users = torch.arange(1, 51)
    history = torch.randint(1, 41, (50, 6))
    context = Context(users, history, torch.ones(50, 6))
    items = torch.arange(1, 41).repeat(50, 1)
    oracle = world.true_reward(context, items)
    assert torch.allclose(oracle, oracle[:1].expand_as(oracle))  # the same for every user
    assert oracle.std() > 0.2  # items do differ


def test_true_reward_refuses_ids_outside_the_world() -> None:
    world = World(SMALL)
    context = Context(torch.tensor([1, 2]), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="items must be world ids in 1..120; got 121"):
        world.true_reward(context, torch.tensor([[1], [121]]))
    with pytest.raises(ValueError, match="users"):
        world.true_reward(
            Context(torch.tensor([0, 2]), context.history_items, context.history_rewards),
            torch.tensor([[1], [2]]),
        )


def test_randomized_exposure_rates_unseen_items_after_the_log() -> None:
    world = World(SMALL)
    log = world.generate()
    holdout = world.randomized_exposure(4, seed=11)
    assert holdout.schema.equals(log.schema)
    assert holdout.equals(world.randomized_exposure(4, seed=11))
    assert not holdout.equals(world.randomized_exposure(4, seed=12))
    assert np.all(np.bincount(holdout["user_id"].to_numpy())[1:] == 4)
    assert holdout["timestamp"].to_numpy().min() > log["timestamp"].to_numpy().max()
    seen = set(zip(log["user_id"].to_pylist(), log["item_id"].to_pylist(), strict=True))
    pairs = list(zip(holdout["user_id"].to_pylist(), holdout["item_id"].to_pylist(), strict=True))
    assert not seen & set(pairs) and len(set(pairs)) == len(pairs)
    # Uniform over unseen items: exposure is far flatter than the log's.
    assert (
        popularity_gini(holdout["item_id"].to_numpy(), 120)
        < popularity_gini(log["item_id"].to_numpy(), 120) - 0.2
    )


# --- presets and config -----------------------------------------------------------------------


def test_presets_exist_and_accept_overrides() -> None:
    assert {"learnable", "item_mean_noise", "directional"} <= set(PRESETS)
    config = SimulationConfig.preset("learnable", n_users=10, seed=5)
    assert config.noise == PRESETS["learnable"]["noise"] and config.n_users == 10
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        SimulationConfig.preset("nope")


def test_presets_order_learnability_as_documented() -> None:
    """Oracle share of reward variance explained: learnable > directional > item_mean_noise's
    user-specific part (zero)."""
    shares = {}
    for name in ("learnable", "directional", "item_mean_noise"):
        parts = World(SimulationConfig.preset(name, n_users=500, n_items=300)).variance_components()
        shares[name] = parts["interaction"] / sum(parts.values())
    # directional: a small learnable taste (30% of a weak one), well below learnable's
    assert shares["learnable"] > 0.5 > 0.2 > shares["directional"] > 0.02
    assert shares["item_mean_noise"] == 0.0


def test_every_config_field_is_a_cli_friendly_scalar_with_help() -> None:
    for field in dataclasses.fields(SimulationConfig):
        assert field.type in (int, float, bool), field.name
        assert isinstance(field.default, field.type), field.name
        assert field.metadata["help"], field.name


def test_bad_config_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="n_users must be >= 1"):
        SimulationConfig(n_users=0)
    with pytest.raises(ValueError, match="observable_share must be in"):
        SimulationConfig(observable_share=1.5)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        SimulationConfig(noise=-0.1)


# --- semi-synthetic worlds --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_pair() -> tuple[pa.Table, World]:
    """A generated "real" log (raw ids not 1..n) and the world fitted to it."""
    source = World(SimulationConfig(n_users=400, n_items=300, mean_events=30.0, seed=8))
    real = source.generate()
    real = real.set_column(0, "user_id", pa.array(real["user_id"].to_numpy() * 7 + 1000))
    return real, world_from_interactions(real, rank=8, seed=2)


def test_from_interactions_reproduces_histogram_popularity_and_lengths(
    fitted_pair: tuple[pa.Table, World],
) -> None:
    real, fitted = fitted_pair
    assert fitted.n_users == 400 and fitted.n_items == len(real["item_id"].unique())
    simulated = fitted.generate()
    levels = np.arange(1.0, 6.0)
    real_hist = np.array([np.mean(real["reward"].to_numpy() == v) for v in levels])
    sim_hist = np.array([np.mean(simulated["reward"].to_numpy() == v) for v in levels])
    assert 0.5 * np.abs(real_hist - sim_hist).sum() < 0.03  # total variation distance
    real_items = np.unique(real["item_id"].to_numpy(), return_inverse=True)[1] + 1
    real_gini = popularity_gini(real_items, fitted.n_items)
    sim_gini = popularity_gini(simulated["item_id"].to_numpy(), fitted.n_items)
    assert abs(real_gini - sim_gini) < 0.05
    real_lengths = np.bincount(np.unique(real["user_id"].to_numpy(), return_inverse=True)[1])
    assert np.array_equal(np.bincount(simulated["user_id"].to_numpy())[1:], real_lengths)
    assert fitted.raw_user_ids is not None and fitted.raw_user_ids[1] == 1 * 7 + 1000
    # Deterministic; timestamps increase within each user and tie as often as the real ones.
    assert world_from_interactions(real, rank=8, seed=2).generate().equals(simulated)

    def steps(table: pa.Table) -> np.ndarray:
        users = table["user_id"].to_numpy()
        return np.diff(table["timestamp"].to_numpy())[users[1:] == users[:-1]]

    assert np.all(steps(simulated) >= 0)
    assert np.mean(steps(simulated) == 0) == pytest.approx(np.mean(steps(real) == 0), abs=0.03)


def test_a_fitted_world_is_about_as_learnable_as_its_source(
    fitted_pair: tuple[pa.Table, World],
) -> None:
    """The same model's held-out error on the fitted world's log is close to the real one's."""
    from rmdiag.simulate.fit import _heldout_mse

    real, fitted = fitted_pair

    def error(table: pa.Table) -> float:
        users = np.unique(table["user_id"].to_numpy(), return_inverse=True)[1] + 1
        items = np.unique(table["item_id"].to_numpy(), return_inverse=True)[1] + 1
        return _heldout_mse(
            users,
            items,
            table["reward"].to_numpy(),
            int(users.max()),
            int(items.max()),
            8,
            0.1,
            10,
            0,
        )

    assert error(fitted.generate()) == pytest.approx(error(real), rel=0.1)


def test_from_interactions_keeps_continuous_rewards_continuous() -> None:
    real = World(small(continuous=True)).generate()
    fitted = world_from_interactions(real, rank=4, seed=0)
    rewards = fitted.generate()["reward"].to_numpy()
    assert fitted.config.continuous and np.unique(rewards).size > 100
    assert rewards.min() >= real["reward"].to_numpy().min()
    assert abs(rewards.mean() - real["reward"].to_numpy().mean()) < 0.15


def test_from_interactions_refuses_bad_tables() -> None:
    table = pa.table({"user_id": [1, 2], "item_id": [1, 2], "reward": [3.0, 4.0]})
    with pytest.raises(ValueError, match="missing column 'timestamp'"):
        world_from_interactions(table)
    table = pa.table(
        {"user_id": [1, 2], "item_id": [1, 2], "timestamp": [0, 0], "reward": [3.0, np.nan]}
    )
    with pytest.raises(ValueError, match="non-finite value at row 1"):
        world_from_interactions(table)


# --- reward hacking: a reward model wrong exactly where the log has no data ------------------


def test_rarely_exposed_is_the_configured_tail() -> None:
    world = World(small(n_users=300, tail_share=0.25, tail_exposure=0.001, exploration=0.0))
    tail = world.rarely_exposed()
    assert tail.shape == (121,) and not tail[0] and tail.sum() == 30
    counts = np.bincount(world.generate()["item_id"].to_numpy(), minlength=121)
    assert counts[tail].sum() < 0.02 * counts.sum()


def test_misspecified_reward_is_right_on_explored_items_and_hackable_on_the_tail() -> None:
    world = World(small(n_users=200))
    tail = torch.from_numpy(world.rarely_exposed())
    model = world.misspecified_reward(tail_bonus=1.5, tail_spread=0.5, n_members=4, seed=1)
    users = torch.arange(1, 201)
    context = Context(users, torch.zeros(200, 3, dtype=torch.long), torch.zeros(200, 3))
    items = torch.arange(1, 121).repeat(200, 1)
    truth = world.true_reward(context, items)
    members = model.members(context, items)
    assert members.shape == (4, 200, 120)
    assert torch.allclose(model(context, items), members.mean(0))
    explored = ~tail[items]
    assert torch.allclose(members[:, explored], truth[explored].expand(4, -1))
    # Ensemble spread is zero where the model is right and positive where it is wrong.
    spread = members.std(0)
    assert spread[explored].max() == 0.0 and spread[~explored].mean() > 0.2
    # Greedy optimization of the wrong model picks tail items and loses true reward.
    hacked = model(context, items).argmax(1)
    best = truth.argmax(1)
    assert tail[items[torch.arange(200), hacked]].float().mean() > 0.5
    rows = torch.arange(200)
    assert truth[rows, hacked].mean() < truth[rows, best].mean() - 0.3


def test_item_regions_group_items_of_like_taste() -> None:
    world = World(small(n_items=200))
    regions = world.item_regions(8)
    assert regions.shape == (201,) and regions.dtype == np.int64 and regions[0] == 0
    assert set(np.unique(regions[1:])) <= set(range(8)) and np.unique(regions[1:]).size > 4
    assert np.array_equal(regions, World(small(n_items=200)).item_regions(8))
    directions = world.parameters.item_directions[1:]
    cosine = directions @ directions.T
    same = regions[1:, None] == regions[None, 1:]
    off_diagonal = ~np.eye(200, dtype=bool)
    assert cosine[same & off_diagonal].mean() > cosine[~same].mean() + 0.2


def test_randomized_exposure_conditions_on_the_users_whole_log() -> None:
    world = World(small(noise=0.0, satiation=1.0))  # noise-free: rating = true reward
    log, holdout = world.generate(), world.randomized_exposure(3, seed=0)
    users = log["user_id"].to_numpy()
    last_rows = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # each user's last event
    context, _ = contexts_for_events(log, last_rows, max_len=10)
    # The history after the last event = the last event's history plus that event.
    items = np.array(log["item_id"].to_numpy())
    history = torch.cat(
        [context.history_items[:, 1:], torch.from_numpy(items[last_rows])[:, None]], 1
    )
    full = Context(context.users, history, torch.zeros_like(history, dtype=torch.float32))
    holdout_items = torch.from_numpy(np.array(holdout["item_id"].to_numpy()).reshape(-1, 3))
    oracle = world.true_reward(full, holdout_items)
    np.testing.assert_array_equal(oracle.numpy().ravel(), holdout["reward"].to_numpy())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 1000),
    noise=st.floats(0.0, 2.0),
    continuous=st.booleans(),
    batch=st.integers(1, 6),
    length=st.integers(0, 8),
)
def test_true_reward_stays_on_the_scale_and_is_deterministic(
    seed: int, noise: float, continuous: bool, batch: int, length: int
) -> None:
    world = World(
        SimulationConfig(n_users=20, n_items=30, seed=seed, noise=noise, continuous=continuous)
    )
    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(1, 21, (batch,), generator=generator)
    history = torch.randint(0, 31, (batch, length), generator=generator)
    context = Context(users, history, torch.zeros(batch, length))
    items = torch.randint(1, 31, (batch, 7), generator=generator)
    oracle = world.true_reward(context, items)
    assert oracle.shape == (batch, 7)
    assert torch.all((oracle >= 1.0) & (oracle <= 5.0))
    assert torch.equal(oracle, world.true_reward(context, items))
    sampled = world.sample_reward(context, items, np.random.default_rng(seed))
    assert torch.all((sampled >= 1.0) & (sampled <= 5.0))
    if not continuous:
        assert torch.equal(sampled, sampled.round())
