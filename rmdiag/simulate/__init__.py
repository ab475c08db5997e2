"""Simulated recommendation worlds with known ground truth.

A `World` holds latent user and item factors, item quality, user bias, a popularity-biased
behaviour policy and a rating model, and generates sequential interaction logs from them. Because
the generating model is known, `World.true_reward` is an exact oracle (a `RewardFn`), which lets
the audit and the post-training studies compare what a reward model learnt against the truth.

The generating model (all ids 1-based; 0 is padding everywhere)
------------------------------------------------------------------
Latent utility of item i for user u after the history h (the user's previous items):

    z(u, i, h) = rating_mean + b_u + q_i + <p_u, v_i> + e(u, i) - satiation * s(i, h)

- b_u ~ N(0, user_bias_scale^2): the user's bias (a user-mean baseline can learn it);
- q_i = item quality ~ N(0, item_quality_scale^2) (an item-mean baseline can learn it);
- <p_u, v_i>: rank-`rank` interaction, the user-specific preference a model can learn from the
  log; its standard deviation is affinity_scale * sqrt(observable_share);
- e(u, i) ~ N(0, affinity_scale^2 * (1 - observable_share)): a hidden user-item preference,
  independent across pairs, that no model can learn from other pairs (it is a fixed function of
  the pair, so the oracle knows it and repeated ratings of one pair share it);
- s(i, h) = (sqrt(rank) / w) * sum of cos(v_i, v_j) over the last w = satiation_window items j
  of h: the satiation term, a sequential effect a history-aware model can learn (items like the
  ones just consumed are worth less); sqrt(rank) * cos has unit variance for unrelated items.

Observed reward: with integer ratings (the default, like MovieLens), an ordinal probit model
  r = levels[#{k : thresholds_k <= z + noise * eps}],  eps ~ N(0, 1),
with levels 1..5 and thresholds 1.5, 2.5, 3.5, 4.5 (i.e. round and clip); with
`continuous=True`, r = clip(z + noise * eps, 1, 5). `true_reward` is E[r | u, i, h], computed in
closed form from the normal CDF, so it is exact, not a sample mean.

Behaviour policy: each user consumes n_u distinct items drawn sequentially, without
replacement, with weights
  (1 - exploration) * softmax_i(exposure_concentration * pop_i + log(tail_exposure) * 1[i in tail]
                                + affinity_weight * a(u, i) / sd(a)) + exploration / n_items
(drawn with the Gumbel-top-k trick, which is exactly that sequential sampling). pop_i ~ N(0, 1)
is the item's popularity (correlated with quality by popularity_quality_corr); the tail is the
tail_share of items with the lowest popularity; `exploration` is randomized exploration traffic
(how rare items reach real logs); a(u, i) = q_i + <p_u, v_i> + e(u, i) is the user's affinity
(users pick what they like, so the log is missing-not-at-random, as real logs are).

Sequence lengths are log-normal (mean mean_events, log-sd length_sigma) clipped to
[min_events, n_items]. Timestamps: each user is active in a window inside
[start_time, start_time + time_span_days); events come in sessions (mean session_length events)
a few seconds apart, so timestamps can repeat within a user, as in MovieLens; sessions are
spread over the window.

Selection: users pick what they like, so logged ratings are higher than ratings of random
items (with the defaults the logged mean is ~3.5 while the latent mean `rating_mean` is 2.7);
`randomized_exposure` gives those unbiased ratings.

Determinism: global parameters come from `numpy.random.default_rng(seed)`; every per-user,
per-pair and per-event random number is a counter-based hash of (seed, stream, user, item or
position), so a user's events do not depend on which other users are generated with it. That is
what makes `generate_batches` (bounded memory, any block size) concatenate to `generate()`.

Scale: a block of B users costs about 40 * B * n_items bytes (the policy's logits over the
whole catalog), independent of the total number of users; the defaults (~90k events) generate
in about half a second, 10M events (100k users x 100) stream through `generate_batches(5000)`
in about a minute at under 1 GiB peak RSS on a loaded 2-core machine. At 10^5 items and more
`World(config, rejection_sampling=True)` draws the same behaviour policy by rejection
(`rejection`): O(events) per user instead of O(n_items), the same law with other draws.

Oracle helpers: `true_reward` (exact expectation, a `RewardFn`), `sample_reward` (fresh noisy
ratings: the world as an online environment), `randomized_exposure` (a holdout of uniformly
random items), `rarely_exposed` (the tail mask), `item_regions` (taste clusters, for the
user-region unexplored slice) and `misspecified_reward` (an ensemble reward model that is wrong
only on the tail, for reward-hacking studies). `SimulationConfig.preset`
names worlds for the audit: "learnable", "directional" and "item_mean_noise" (see `PRESETS`).

Modules: `config` (SimulationConfig, PRESETS), `hashing` (the counter-based random numbers),
`parameters` (WorldParameters, drawn from a config), `model` (the generating model: utility,
ratings, behaviour policy, timestamps), `rejection` (the behaviour policy without a pass over
the catalog), `world` (World, MisspecifiedReward), `fit`
(`world_from_interactions`: a world fitted to a real log), `statistics` (popularity_gini).
"""

from rmdiag.simulate.config import PRESETS, SimulationConfig
from rmdiag.simulate.fit import world_from_interactions
from rmdiag.simulate.parameters import WorldParameters
from rmdiag.simulate.statistics import popularity_gini
from rmdiag.simulate.world import MisspecifiedReward, World

__all__ = [
    "PRESETS",
    "MisspecifiedReward",
    "SimulationConfig",
    "World",
    "WorldParameters",
    "popularity_gini",
    "world_from_interactions",
]
