"""The rejection sampler draws the behaviour policy's sequences from the Gumbel-top-k law."""

import dataclasses

import numpy as np
import pyarrow as pa
import scipy.special
import scipy.stats

from rmdiag.simulate import SimulationConfig, World
from rmdiag.simulate.model import behaviour_log_weights, behaviour_sequences

# Tiny catalog, two events per user: the law of the ordered first pair is known in closed form.
# Hidden taste, affinity and exploration are all on, so every branch of the sampler is used.
PAIRS = SimulationConfig(n_users=6000, n_items=6, rank=2, mean_events=2.0, length_sigma=0.0,
                         min_events=2, observable_share=0.9, exploration=0.1, seed=5)


def _pair_counts(world: World) -> np.ndarray:
    users = np.arange(1, world.n_users + 1)
    items, valid = behaviour_sequences(world.parameters, world.seed, users, world.sampler)
    assert bool(valid.all()) and items.shape == (users.size, 2)
    assert bool((items[:, 0] != items[:, 1]).all())  # without replacement
    counts = np.zeros((world.n_items, world.n_items))
    np.add.at(counts, (items[:, 0] - 1, items[:, 1] - 1), 1)
    return counts


def _expected_pairs(world: World, log_weights: np.ndarray) -> np.ndarray:
    """Σ_u P_u(first = i, second = j) = Σ_u w_i w_j / (1 - w_i), sequential sampling."""
    p = np.exp(log_weights - scipy.special.logsumexp(log_weights, axis=1, keepdims=True))
    p = np.broadcast_to(p, (world.n_users, world.n_items))
    expected = (p[:, :, None] * p[:, None, :] / (1.0 - p[:, :, None])).sum(0)
    np.fill_diagonal(expected, 0.0)
    return expected


def _p_value(counts: np.ndarray, expected: np.ndarray) -> float:
    off = ~np.eye(counts.shape[0], dtype=bool)
    return float(scipy.stats.chisquare(counts[off], expected[off]).pvalue)


def test_rejection_sampler_keeps_the_behaviour_policys_distribution() -> None:
    gumbel, rejection = World(PAIRS), World(PAIRS, rejection_sampling=True)
    users = np.arange(1, PAIRS.n_users + 1)
    expected = _expected_pairs(gumbel, behaviour_log_weights(gumbel.parameters, gumbel.seed,
                                                             users))
    rejected = _pair_counts(rejection)
    assert _p_value(_pair_counts(gumbel), expected) > 1e-3  # today's path, the reference
    assert _p_value(rejected, expected) > 1e-3
    # the test has power: the law without the users' affinity is rejected
    blind = dataclasses.replace(gumbel.parameters, affinity_weight=0.0)
    blind_pairs = _expected_pairs(gumbel, behaviour_log_weights(blind, 0, users))
    assert _p_value(rejected, blind_pairs) < 1e-6
    assert 0.0 < rejection.sampler.acceptance <= 1.0


def test_rejection_sampled_logs_are_deterministic_per_user_whatever_the_block() -> None:
    config = SimulationConfig(n_users=40, n_items=500, mean_events=15.0, seed=2)
    world = World(config, rejection_sampling=True)
    whole = world.generate()
    blocks = World(config, rejection_sampling=True).generate_batches(7)
    assert whole.equals(pa.concat_tables(list(blocks)).combine_chunks())
    users, items = whole["user_id"].to_numpy(), whole["item_id"].to_numpy()
    lengths = np.bincount(users, minlength=config.n_users + 1)[1:]
    assert np.array_equal(lengths, world.parameters.lengths[1:])
    pairs = users * (config.n_items + 1) + items
    assert np.unique(pairs).size == pairs.size  # distinct items per user
