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
in about a minute at under 1 GiB peak RSS on a loaded 2-core machine.

Oracle helpers: `true_reward` (exact expectation, a `RewardFn`), `sample_reward` (fresh noisy
ratings: the world as an online environment), `randomized_exposure` (a holdout of uniformly
random items), `rarely_exposed` (the tail mask), `item_regions` (taste clusters, for the
user-region unexplored slice) and `misspecified_reward` (an ensemble reward model that is wrong
only on the tail, for reward-hacking studies). `SimulationConfig.preset`
names worlds for the audit: "learnable", "directional" and "item_mean_noise" (see `PRESETS`).
"""

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import scipy.cluster.vq
import scipy.optimize
import scipy.special

if TYPE_CHECKING:  # torch is imported where tensors are made: `rmdiag simulate` never needs it
    import torch

__all__ = [
    "PRESETS",
    "MisspecifiedReward",
    "SimulationConfig",
    "World",
    "WorldParameters",
    "popularity_gini",
]

_SECONDS_PER_DAY = 86_400
# Mean gap between two events of one session. A few seconds, so that integer timestamps of
# consecutive events often coincide, as they do in MovieLens (users rate in bursts).
_WITHIN_SESSION_MEAN_GAP_S = 2.0
# Users x items per internal block: the policy's [block, n_items] arrays then take ~160 MB.
_BLOCK_CELLS = 4_000_000


def _block_users(n_items: int) -> int:
    return max(1, min(2048, _BLOCK_CELLS // n_items))


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of a simulated world. Defaults give ~2,000 users x ~45 events (~90k events).

    Field names map to CLI flags (`n_users` -> `--n-users`); only ints, floats and bools.
    """

    n_users: int = field(default=2000, metadata=_help("number of users (ids 1..n_users)"))
    n_items: int = field(default=1000, metadata=_help("number of items (ids 1..n_items)"))
    seed: int = field(default=0, metadata=_help("random seed; same seed, identical world and log"))
    rank: int = field(default=16, metadata=_help("dimension of the latent user/item factors"))
    mean_events: float = field(
        default=45.0, metadata=_help("mean events per user before clipping (log-normal lengths)")
    )
    length_sigma: float = field(
        default=0.8, metadata=_help("log-sd of the per-user length (heavier tail when larger)")
    )
    min_events: int = field(default=5, metadata=_help("fewest events a user has"))
    rating_mean: float = field(
        default=2.7,
        metadata=_help("mean latent utility over all user-item pairs (the logged mean is higher)"),
    )
    user_bias_scale: float = field(
        default=0.35, metadata=_help("sd of the per-user rating bias (what user_mean learns)")
    )
    item_quality_scale: float = field(
        default=0.6, metadata=_help("sd of item quality (what item_mean learns)")
    )
    affinity_scale: float = field(
        default=0.8, metadata=_help("sd of the user-specific preference (latent + hidden part)")
    )
    observable_share: float = field(
        default=0.8,
        metadata=_help(
            "share of the user-specific preference variance that is the learnable latent "
            "interaction; the rest is a hidden per-(user,item) term no model can learn"
        ),
    )
    satiation: float = field(
        default=0.5,
        metadata=_help("penalty for items similar to the last satiation_window items (0 = none)"),
    )
    satiation_window: int = field(
        default=5, metadata=_help("how many recent items the satiation term looks at")
    )
    noise: float = field(
        default=0.6, metadata=_help("sd of the per-event rating noise on the latent scale")
    )
    continuous: bool = field(
        default=False,
        metadata=_help("continuous rewards clipped to [1, 5] instead of integer ratings 1..5"),
    )
    exposure_concentration: float = field(
        default=1.5,
        metadata=_help("weight of item popularity in the behaviour policy (0 = none)"),
    )
    affinity_weight: float = field(
        default=1.0,
        metadata=_help("weight of the user's standardized affinity in the behaviour policy"),
    )
    popularity_quality_corr: float = field(
        default=0.3, metadata=_help("correlation of item popularity with item quality")
    )
    tail_share: float = field(
        default=0.2,
        metadata=_help("share of the catalog (least popular items) that is rarely exposed"),
    )
    tail_exposure: float = field(
        default=0.01,
        metadata=_help("exposure odds of a tail item relative to a like head item"),
    )
    exploration: float = field(
        default=0.02,
        metadata=_help(
            "share of the behaviour policy's probability spread uniformly over the catalog "
            "(randomized exploration; how often rare items reach the log)"
        ),
    )
    session_length: float = field(
        default=8.0, metadata=_help("mean events per session (events seconds apart)")
    )
    time_span_days: int = field(default=730, metadata=_help("global time range of the log in days"))
    start_time: int = field(
        default=1_577_836_800, metadata=_help("first possible timestamp (unix seconds)")
    )

    def __post_init__(self) -> None:
        problems = []
        if self.n_users < 1:
            problems.append(f"n_users must be >= 1, got {self.n_users}")
        if self.n_items < 2:
            problems.append(f"n_items must be >= 2, got {self.n_items}")
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if self.mean_events <= 0:
            problems.append(f"mean_events must be > 0, got {self.mean_events}")
        if self.min_events < 1:
            problems.append(f"min_events must be >= 1, got {self.min_events}")
        if not 0.0 <= self.observable_share <= 1.0:
            problems.append(f"observable_share must be in [0, 1], got {self.observable_share}")
        if not 0.0 <= self.tail_share < 1.0:
            problems.append(f"tail_share must be in [0, 1), got {self.tail_share}")
        if not 0.0 <= self.exploration < 1.0:
            problems.append(f"exploration must be in [0, 1), got {self.exploration}")
        if not 0.0 < self.tail_exposure <= 1.0:
            problems.append(f"tail_exposure must be in (0, 1], got {self.tail_exposure}")
        if not -1.0 <= self.popularity_quality_corr <= 1.0:
            problems.append(
                f"popularity_quality_corr must be in [-1, 1], got {self.popularity_quality_corr}"
            )
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if self.satiation_window < 1:
            problems.append(f"satiation_window must be >= 1, got {self.satiation_window}")
        if self.session_length < 1:
            problems.append(f"session_length must be >= 1, got {self.session_length}")
        if self.time_span_days < 1:
            problems.append(f"time_span_days must be >= 1, got {self.time_span_days}")
        for name in (
            "length_sigma",
            "user_bias_scale",
            "item_quality_scale",
            "affinity_scale",
            "satiation",
            "noise",
            "exposure_concentration",
        ):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid SimulationConfig: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SimulationConfig":
        """A named world (see `PRESETS`), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(cls(), **{**PRESETS[name], **overrides})


# Presets for the reward-model audit (issue 4) and the post-training studies (issue 5).
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: a MovieLens-like mix of bias, quality, learnable taste, hidden taste,
    # satiation and noise.
    "default": {},
    # Reward mostly explained by what a model can observe: strong learnable user-item
    # interaction, no hidden term, low noise, a small rarely-exposed tail that still gets some
    # exposure (so unexplored items carry some signal). A good reward model should beat every
    # baseline here, on the unexplored slice too: the audit's `generalizes` world.
    "learnable": {
        "rank": 4,
        "affinity_scale": 1.2,
        "observable_share": 1.0,
        "noise": 0.3,
        "satiation": 0.3,
        "tail_share": 0.05,
        "tail_exposure": 0.1,
    },
    # Rewards are item means plus pure noise: no user bias, no user-specific taste, no
    # sequential effect. Nothing beats item_mean: the audit's `unreliable` world.
    "item_mean_noise": {
        "user_bias_scale": 0.0,
        "affinity_scale": 0.0,
        "satiation": 0.0,
        "noise": 1.0,
    },
    # In between: a weak taste (rank 4), mostly hidden (30% learnable), under heavy noise, with
    # a large rarely-exposed tail. A model orders one user's items better than chance (user
    # bias, item quality and a little taste are learnable), but its squared error is dominated
    # by noise and the hidden taste, so it does not beat the additive baseline: the audit's
    # `directional` world. (At 70% learnable a good model beat every baseline on some seeds;
    # the audit's tests found 0.3 in between on every seed tried.)
    "directional": {
        "rank": 4,
        "affinity_scale": 0.7,
        "observable_share": 0.3,
        "item_quality_scale": 0.4,
        "noise": 1.2,
        "satiation": 0.0,
        "tail_share": 0.3,
    },
}


class _ContextLike(Protocol):
    users: "torch.Tensor"
    history_items: "torch.Tensor"
    history_rewards: "torch.Tensor"


@dataclass(frozen=True)
class WorldParameters:
    """The arrays that define a world; row 0 of every per-user/per-item array is padding.

    `levels` are the reward values of an ordinal rating scale and `thresholds` its cut points
    on the latent scale (len(levels) - 1 of them); `levels` empty means continuous rewards
    clipped to [low, high]. `exposure_logits` is the behaviour policy's per-item logit
    (popularity and tail), `affinity_weight` the weight on the raw affinity (already divided
    by its standard deviation). `lengths`, `active_start` and `active_end` are per user.
    """

    rating_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_directions: np.ndarray
    hidden_scale: float
    satiation: float
    satiation_window: int
    noise: float
    levels: np.ndarray
    thresholds: np.ndarray
    low: float
    high: float
    exposure_logits: np.ndarray
    affinity_weight: float
    exploration: float
    lengths: np.ndarray
    active_start: np.ndarray
    active_end: np.ndarray
    session_length: float
    session_gap_seconds: float

    @property
    def n_users(self) -> int:
        return int(self.user_bias.shape[0] - 1)

    @property
    def n_items(self) -> int:
        return int(self.item_bias.shape[0] - 1)

    @property
    def continuous(self) -> bool:
        return self.levels.size == 0


# --- counter-based random numbers -------------------------------------------------------------
# splitmix64's finalizer: a bijective mix of 64 bits with full avalanche. A random number of
# (seed, stream, a, b) is mix(mix(mix(key(seed, stream)) + a * G) + b * G), so it depends on
# nothing but those four integers.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STREAM_GUMBEL, _STREAM_HIDDEN, _STREAM_NOISE, _STREAM_SESSION, _STREAM_GAP = 1, 2, 3, 4, 5
_STREAM_HOLDOUT_ITEMS, _STREAM_HOLDOUT_NOISE, _STREAM_MISSPECIFIED = 6, 7, 8


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _key(seed: int, stream: int) -> np.ndarray:
    """A 1-element uint64 array (arrays wrap on overflow silently; numpy scalars warn)."""
    base = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    return _mix(_mix(base) + np.array([stream], dtype=np.uint64) * _GOLDEN)


def _hash_uniform(key: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) (open interval) numbers, one per broadcast element of (a, b)."""
    ha = _mix(key + np.asarray(a).astype(np.uint64) * _GOLDEN)
    h = _mix(ha + np.asarray(b).astype(np.uint64) * _GOLDEN)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _hash_normal(key: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return scipy.special.ndtri(_hash_uniform(key, a, b))


def popularity_gini(item_ids: np.ndarray, n_items: int) -> float:
    """Gini coefficient of the exposure counts of items 1..n_items (0 = even, ~1 = one item).

    Items never exposed count as zeros, so a concentrated policy scores high.
    """
    counts = np.bincount(np.asarray(item_ids, dtype=np.int64), minlength=n_items + 1)[1:]
    counts = np.sort(counts).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    n = counts.size
    ranks = np.arange(1, n + 1)
    return float((2.0 * np.sum(ranks * counts) / (n * total)) - (n + 1.0) / n)


class World:
    """A simulated world: generates logs, and knows the true expected reward of any item.

    Build one from a config (`World(SimulationConfig(...))`) or fit one to a real log
    (`World.from_interactions(table)`). World ids are 1..n_users and 1..n_items.
    """

    def __init__(
        self, config: SimulationConfig | None = None, *, parameters: WorldParameters | None = None
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.parameters = parameters if parameters is not None else _draw_parameters(self.config)
        self.seed = int(self.config.seed)
        # Raw ids of the real log a fitted world came from (index = world id); None otherwise.
        self.raw_user_ids: np.ndarray | None = None
        self.raw_item_ids: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.parameters.n_users

    @property
    def n_items(self) -> int:
        return self.parameters.n_items

    @property
    def end_time(self) -> int:
        """The last timestamp any logged event can have."""
        return int(self.parameters.active_end[1:].max())

    # --- logs ---------------------------------------------------------------------------------

    def generate(self, *, with_expected: bool = False) -> pa.Table:
        """The whole log: user_id, item_id, timestamp (int64), reward (float64).

        Ordered by user, then timestamp (ties keep the sequence order). With
        `with_expected=True` a column `expected_reward` holds each event's true expected
        reward given the user's preceding events (the oracle's value, before noise).
        """
        batch = _block_users(self.n_items)
        blocks = list(self.generate_batches(batch, with_expected=with_expected))
        return pa.concat_tables(blocks).combine_chunks()

    def generate_batches(
        self, batch_users: int, *, with_expected: bool = False
    ) -> Iterator[pa.Table]:
        """The log as tables of `batch_users` consecutive users each, in bounded memory.

        Concatenated, they equal `generate()` exactly, whatever the block size.
        """
        if batch_users < 1:
            raise ValueError(f"batch_users must be >= 1, got {batch_users}")
        for first in range(1, self.n_users + 1, batch_users):
            last = min(first + batch_users, self.n_users + 1)
            yield self._generate_block(np.arange(first, last, dtype=np.int64), with_expected)

    def _generate_block(self, users: np.ndarray, with_expected: bool) -> pa.Table:
        params = self.parameters
        items_2d, valid = _behaviour_sequences(params, self.seed, users)
        rows, positions = np.nonzero(valid)  # row-major: by user, then sequence position
        flat_users, flat_items = users[rows], items_2d[rows, positions]
        recent = _recent_items(items_2d, rows, positions, params.satiation_window)
        recent_directions = _recent_directions(params, recent)
        latent = _latent_utility(params, self.seed, flat_users, flat_items, recent_directions)
        eps = _hash_normal(_key(self.seed, _STREAM_NOISE), flat_users, positions)
        rewards = _observe(params, latent + params.noise * eps)
        timestamps = _timestamps(params, self.seed, flat_users, positions)
        columns: dict[str, Any] = {
            "user_id": pa.array(flat_users, pa.int64()),
            "item_id": pa.array(flat_items, pa.int64()),
            "timestamp": pa.array(timestamps, pa.int64()),
            "reward": pa.array(rewards, pa.float64()),
        }
        if with_expected:
            columns["expected_reward"] = pa.array(_expected(params, latent), pa.float64())
        return pa.table(columns)

    def randomized_exposure(self, n_per_user: int, seed: int) -> pa.Table:
        """Ratings of uniformly random items, the log's schema: a randomized-exposure holdout.

        Each user rates `n_per_user` distinct items drawn uniformly from the items absent from
        their log (fewer if the user has consumed nearly everything). Each rating conditions on
        the user's full logged history (not on the other holdout ratings), and the events are
        stamped after the log's last timestamp, as if collected after the log. `seed` picks
        the items and the noise; the world (and its log) stays the same.
        """
        if n_per_user < 1:
            raise ValueError(f"n_per_user must be >= 1, got {n_per_user}")
        params = self.parameters
        item_key = _key(self.seed ^ (seed * 0x2545F4914F6CDD1D), _STREAM_HOLDOUT_ITEMS)
        noise_key = _key(self.seed ^ (seed * 0x2545F4914F6CDD1D), _STREAM_HOLDOUT_NOISE)
        all_items = np.arange(1, self.n_items + 1)
        tables = []
        block = _block_users(self.n_items)
        for first in range(1, self.n_users + 1, block):
            users = np.arange(first, min(first + block, self.n_users + 1))
            items_2d, valid = _behaviour_sequences(params, self.seed, users)
            consumed = np.zeros((users.size, self.n_items + 1), dtype=bool)
            np.put_along_axis(consumed, np.where(valid, items_2d, 0), True, axis=1)
            keys = _hash_uniform(item_key, users[:, None], all_items[None, :])
            keys[consumed[:, 1:]] = np.inf  # consumed items are never drawn
            take = min(n_per_user, self.n_items)
            chosen = np.argsort(keys, axis=1, kind="stable")[:, :take]
            chosen_valid = np.take_along_axis(keys, chosen, axis=1) < np.inf
            counts = chosen_valid.sum(axis=1)
            flat_users = np.repeat(users, counts)
            flat_items = chosen[chosen_valid] + 1
            positions = np.broadcast_to(np.arange(take), chosen.shape)[chosen_valid]
            lengths = valid.sum(axis=1)
            recent = _recent_items(
                items_2d, np.arange(users.size), lengths, params.satiation_window
            )
            recent_directions = _recent_directions(params, recent)
            if recent_directions is not None:
                recent_directions = np.repeat(recent_directions, counts, axis=0)
            latent = _latent_utility(params, self.seed, flat_users, flat_items, recent_directions)
            eps = _hash_normal(noise_key, flat_users, positions)
            rewards = _observe(params, latent + params.noise * eps)
            timestamps = self.end_time + 1 + positions.astype(np.int64)
            tables.append(
                pa.table(
                    {
                        "user_id": pa.array(flat_users, pa.int64()),
                        "item_id": pa.array(flat_items.astype(np.int64), pa.int64()),
                        "timestamp": pa.array(timestamps, pa.int64()),
                        "reward": pa.array(rewards, pa.float64()),
                    }
                )
            )
        return pa.concat_tables(tables).combine_chunks()

    # --- the oracle ---------------------------------------------------------------------------

    def true_reward(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        """E[reward | user, history, item] for each candidate: FloatTensor[B, K] (a RewardFn).

        Exact (closed form over the rating noise). Uses the context's users and the last
        `satiation_window` items of its left-padded history; ids are world ids.
        """
        latent, shape = self._latent_for(context, items)
        expected = _expected(self.parameters, latent).reshape(shape)
        import torch

        return torch.from_numpy(expected.astype(np.float32)).to(items.device)

    def sample_reward(
        self, context: _ContextLike, items: "torch.Tensor", rng: np.random.Generator
    ) -> "torch.Tensor":
        """One noisy rating per candidate, drawn from the world's rating model: [B, K].

        For online interaction with the world (an environment, not the log); `rng` supplies
        the noise so repeated calls give fresh draws.
        """
        latent, shape = self._latent_for(context, items)
        noisy = latent + self.parameters.noise * rng.standard_normal(latent.shape)
        rewards = _observe(self.parameters, noisy).reshape(shape)
        import torch

        return torch.from_numpy(rewards.astype(np.float32)).to(items.device)

    def _latent_for(
        self, context: _ContextLike, items: "torch.Tensor"
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Latent utility of each (context row, candidate), flat [B * K], and (B, K)."""
        items_np = items.detach().cpu().numpy().astype(np.int64)
        users_np = context.users.detach().cpu().numpy().astype(np.int64)
        history = context.history_items.detach().cpu().numpy().astype(np.int64)
        if items_np.ndim != 2 or users_np.shape[0] != items_np.shape[0]:
            raise ValueError(
                f"expected items [B, K] with B = len(users) = {users_np.shape[0]}, "
                f"got {tuple(items_np.shape)}"
            )
        for name, ids, low, high in (
            ("users", users_np, 1, self.n_users),
            ("items", items_np, 1, self.n_items),
            ("history_items", history, 0, self.n_items),
        ):
            bad = (ids < low) | (ids > high)
            if bad.any():
                raise ValueError(
                    f"{name} must be world ids in {low}..{high}; got {ids[bad].flat[0]}"
                )
        w = self.parameters.satiation_window
        recent = history[:, ::-1][:, :w]  # most recent first; left padding becomes trailing 0s
        if recent.shape[1] < w:
            recent = np.pad(recent, ((0, 0), (0, w - recent.shape[1])))
        k = items_np.shape[1]
        # Summed per context row, then shared by its K candidates (same numbers, K times less work).
        recent_directions = _recent_directions(self.parameters, recent)
        if recent_directions is not None:
            recent_directions = np.repeat(recent_directions, k, axis=0)
        latent = _latent_utility(
            self.parameters,
            self.seed,
            np.repeat(users_np, k),
            items_np.reshape(-1),
            recent_directions,
        )
        return latent, (items_np.shape[0], k)

    def rarely_exposed(self) -> np.ndarray:
        """Mask over world item ids [n_items + 1] (index 0 False): the rarely exposed tail.

        The `config.tail_share` of items with the lowest behaviour-policy exposure logit: for a
        config world exactly the items that get `tail_exposure`; for a fitted world the items
        the real log exposed least.
        """
        logits = self.parameters.exposure_logits[1:]
        n_tail = int(round(self.config.tail_share * self.n_items))
        mask = np.zeros(self.n_items + 1, dtype=bool)
        mask[1 + np.argsort(logits, kind="stable")[:n_tail]] = True
        return mask

    def item_regions(self, n_regions: int = 10) -> np.ndarray:
        """Region (cluster) of each world item id, int64 [n_items + 1], index 0 unused (0).

        k-means (scipy.cluster.vq.kmeans2, seeded by the world) on the items' latent directions:
        items of one region are alike in taste, so a user who never consumed a region is
        unexplored there. Pass it (mapped to encoded ids) as `item_regions` to
        `rmdiag.split.unexplored_mask`.
        """
        if not 1 <= n_regions <= self.n_items:
            raise ValueError(f"n_regions must be in 1..{self.n_items}, got {n_regions}")
        directions = self.parameters.item_directions[1:]
        _, labels = scipy.cluster.vq.kmeans2(
            directions, n_regions, minit="++", seed=np.random.default_rng(self.seed)
        )
        return np.concatenate([[0], labels]).astype(np.int64)

    def misspecified_reward(
        self,
        tail_bonus: float = 1.5,
        tail_spread: float = 0.0,
        n_members: int = 1,
        seed: int = 0,
    ) -> "MisspecifiedReward":
        """A reward model that is right on explored items and wrong on the rarely exposed tail.

        Member m predicts the true reward plus, on each tail item i, an error
        tail_bonus + tail_spread * N(0, 1) (fixed per (m, i)), clipped to the reward scale:
        the classic failure of a reward model extrapolating where the log has no data.
        Optimizing it hard (PPO) moves a policy toward tail items and lowers the true reward:
        reward hacking with a known answer. With `tail_spread > 0` and several members, the
        ensemble disagrees exactly where it is wrong, so pessimism (mean - kappa * std) can
        detect it. An `EnsembleRewardFn`: `__call__` is the members' mean.
        """
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        members = np.arange(n_members)[:, None]
        items = np.arange(self.n_items + 1)[None, :]
        key = _key(self.seed ^ (seed * 0x2545F4914F6CDD1D), _STREAM_MISSPECIFIED)
        errors = tail_bonus + tail_spread * _hash_normal(key, members, items)
        errors = np.where(self.rarely_exposed()[None, :], errors, 0.0)
        import torch

        return MisspecifiedReward(self, torch.from_numpy(errors.astype(np.float32)))

    def variance_components(self) -> dict[str, float]:
        """Variance of each term of the latent utility over users x items, and of the noise.

        Keys: user_bias, item_quality, interaction, hidden, noise (population variances on
        the latent scale). The satiation term depends on the history and is left out.
        """
        p = self.parameters
        users, item_factors = p.user_factors[1:], p.item_factors[1:]
        cov_u = users.T @ users / users.shape[0]
        cov_i = item_factors.T @ item_factors / item_factors.shape[0]
        mean_dot = float(users.mean(0) @ item_factors.mean(0))
        return {
            "user_bias": float(np.var(p.user_bias[1:])),
            "item_quality": float(np.var(p.item_bias[1:])),
            "interaction": float(np.sum(cov_u * cov_i) - mean_dot**2),
            "hidden": p.hidden_scale**2,
            "noise": p.noise**2,
        }

    # --- semi-synthetic worlds ----------------------------------------------------------------

    @classmethod
    def from_interactions(
        cls,
        table: pa.Table,
        rank: int = 16,
        seed: int = 0,
        *,
        regularization: float | None = None,
        n_iterations: int = 12,
        affinity_weight: float = 1.0,
        calibration_rounds: int = 12,
        match_learnability: bool = True,
    ) -> "World":
        """A world fitted to a real log (columns user_id, item_id, timestamp, reward; raw ids).

        - Latent utility: a biased matrix factorization of rank `rank` fitted by alternating
          least squares (L2 penalty `regularization` * count per row, as ALS-WR; None picks
          it from 0.02, 0.05, 0.1, 0.2, 0.5 by error on 10% of the events held out), so
          z(u, i) = mean + b_u + q_i + <p_u, v_i>; no hidden term, no satiation.
        - Noise: that held-out mean squared error is the rating variance around the truth in
          the simulated world (so an oracle there is as good as the best fit here). With
          `match_learnability`, the noise is then lowered once by the excess error the same
          model shows when fitted to a simulated log, so that the model is about as accurate on
          the simulated log as on the real one.
        - Ratings: if the log has at most 20 distinct reward values they are the ordinal
          levels, and thresholds are solved (scipy brentq) so that the simulated log's rating
          histogram matches the real one; otherwise rewards are continuous, clipped to the
          real range.
        - Exposure: each item's popularity logit is calibrated (multiplicative updates on
          simulated exposure counts) so that the simulated item counts follow the real ones;
          the behaviour policy also weighs the user's affinity by `affinity_weight`.
        - Each user keeps the real number of events (at most n_items) and the real first and
          last timestamps; the gap between events of a session is set so that the share of
          consecutive events with equal timestamps matches the real one.

        World ids are 1..n in sorted raw-id order; `raw_user_ids` / `raw_item_ids` map them
        back (index = world id, index 0 unused). The world's `config` records the sizes, seed,
        rank, fitted mean and noise; its other knobs do not apply to a fitted world. Cost:
        about 10 s for MovieLens-100K on one core (seven ALS fits and the calibrations).
        """
        for name in ("user_id", "item_id", "timestamp", "reward"):
            if name not in table.column_names:
                raise ValueError(
                    f"from_interactions: missing column {name!r}; got {table.column_names}"
                )
        if table.num_rows == 0:
            raise ValueError("from_interactions: the table is empty")
        raw_users, users = np.unique(table["user_id"].to_numpy(), return_inverse=True)
        raw_items, items = np.unique(table["item_id"].to_numpy(), return_inverse=True)
        users, items = users.astype(np.int64) + 1, items.astype(np.int64) + 1
        rewards = table["reward"].to_numpy().astype(np.float64)
        timestamps = table["timestamp"].to_numpy().astype(np.int64)
        bad = ~np.isfinite(rewards)
        if bad.any():
            raise ValueError(
                f"from_interactions: column 'reward' has a non-finite value at row "
                f"{int(np.argmax(bad))}"
            )
        n_users, n_items = raw_users.size, raw_items.size
        if n_items < 2:
            raise ValueError("from_interactions: need at least 2 distinct items")

        # Regularization and noise level from held-out error: fit on 90% of the events, keep
        # the penalty with the lowest error on the other 10%; that error is the noise.
        penalties = _REGULARIZATION_GRID if regularization is None else (regularization,)
        errors = [
            _heldout_mse(users, items, rewards, n_users, n_items, rank, penalty, n_iterations, seed)
            for penalty in penalties
        ]
        chosen, heldout_mse = penalties[int(np.argmin(errors))], float(min(errors))
        fit = _fit_biased_mf(
            users,
            items,
            rewards,
            n_users,
            n_items,
            rank,
            chosen,
            n_iterations,
            np.random.default_rng(seed),
        )

        lengths = np.zeros(n_users + 1, dtype=np.int64)
        lengths[1:] = np.minimum(np.bincount(users, minlength=n_users + 1)[1:], n_items)
        active_start = np.zeros(n_users + 1, dtype=np.int64)
        active_end = np.zeros(n_users + 1, dtype=np.int64)
        order = np.lexsort((timestamps, users))
        first_rows = order[np.searchsorted(users[order], np.arange(1, n_users + 1), "left")]
        last_rows = order[np.searchsorted(users[order], np.arange(1, n_users + 1), "right") - 1]
        active_start[1:], active_end[1:] = timestamps[first_rows], timestamps[last_rows]

        values = np.unique(rewards)
        continuous = values.size > 20
        levels = np.empty(0) if continuous else values
        item_counts = np.bincount(items, minlength=n_items + 1).astype(np.float64)
        norms = np.linalg.norm(fit.item_factors, axis=1, keepdims=True)
        affinity_sd = _affinity_sd(fit.item_bias, fit.user_factors, fit.item_factors, 0.0)
        params = WorldParameters(
            rating_mean=fit.mean,
            user_bias=fit.user_bias,
            item_bias=fit.item_bias,
            user_factors=fit.user_factors,
            item_factors=fit.item_factors,
            item_directions=np.divide(
                fit.item_factors, norms, out=np.zeros_like(fit.item_factors), where=norms > 0
            ),
            hidden_scale=0.0,
            satiation=0.0,
            satiation_window=1,
            noise=math.sqrt(heldout_mse),
            levels=levels,
            thresholds=(levels[:-1] + levels[1:]) / 2.0 if not continuous else np.empty(0),
            low=float(values[0]),
            high=float(values[-1]),
            exposure_logits=np.log(item_counts + 0.5),
            affinity_weight=affinity_weight / affinity_sd if affinity_sd > 0 else 0.0,
            lengths=lengths,
            active_start=active_start,
            active_end=active_end,
            exploration=0.0,
            session_length=SimulationConfig.session_length,
            session_gap_seconds=_session_gap_for_ties(
                _tie_share(users, timestamps), SimulationConfig.session_length
            ),
        )
        calibration_seed = seed + 1_000_003  # not the world's seed: an honest check
        params = _calibrate_exposure(params, item_counts, calibration_seed, calibration_rounds)
        params = _calibrate_ratings(params, rewards, heldout_mse, calibration_seed)
        if match_learnability:
            # A model fitted to the simulated log has estimation error on top of the noise.
            # Lower the noise by that excess once, so that the same model's held-out error on
            # the simulated log is close to its held-out error on the real log.
            probe_config = SimulationConfig(n_users, n_items, seed=calibration_seed)
            simulated = cls(probe_config, parameters=params).generate()
            simulated_mse = _heldout_mse(
                simulated["user_id"].to_numpy(),
                simulated["item_id"].to_numpy(),
                simulated["reward"].to_numpy(),
                n_users,
                n_items,
                rank,
                chosen,
                n_iterations,
                seed,
            )
            target = max(2.0 * heldout_mse - simulated_mse, 0.25 * heldout_mse)
            params = _calibrate_ratings(params, rewards, target, calibration_seed)
        config = SimulationConfig(
            n_users=n_users,
            n_items=n_items,
            seed=seed,
            rank=rank,
            rating_mean=fit.mean,
            noise=params.noise,
            satiation=0.0,
            satiation_window=1,
            continuous=continuous,
            affinity_weight=affinity_weight,
        )
        world = cls(config, parameters=params)
        world.raw_user_ids = np.concatenate([raw_users[:1], raw_users])
        world.raw_item_ids = np.concatenate([raw_items[:1], raw_items])
        return world


class MisspecifiedReward:
    """The world's true reward plus a fixed per-(member, item) error (see
    `World.misspecified_reward`); an `EnsembleRewardFn` in world ids."""

    def __init__(self, world: World, item_errors: "torch.Tensor") -> None:
        self.world = world
        self.item_errors = item_errors  # [M, n_items + 1]

    def members(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        """FloatTensor[M, B, K]: each member's prediction."""
        truth = self.world.true_reward(context, items)
        errors = self.item_errors.to(items.device)[:, items]
        low, high = self.world.parameters.low, self.world.parameters.high
        return (truth[None] + errors).clamp(low, high)

    def __call__(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        return self.members(context, items).mean(0)


# --- building a world from a config -----------------------------------------------------------


def _affinity_sd(
    item_bias: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray, hidden: float
) -> float:
    """Population sd of a(u, i) = q_i + <p_u, v_i> + e(u, i) over users x items (exact)."""
    u, v = user_factors[1:], item_factors[1:]
    second_moment = float(np.sum((u.T @ u / u.shape[0]) * (v.T @ v / v.shape[0])))
    dot_var = second_moment - float(u.mean(0) @ v.mean(0)) ** 2
    mean_dot = u.mean(0)  # covariance of q_i with <p_u, v_i> over items, at the mean user
    cross = 2.0 * float(np.mean((item_bias[1:] - item_bias[1:].mean()) * (v @ mean_dot)))
    return math.sqrt(max(float(np.var(item_bias[1:])) + dot_var + cross + hidden**2, 0.0))


def _draw_parameters(config: SimulationConfig) -> WorldParameters:
    rng = np.random.default_rng(config.seed)
    n_users, n_items, d = config.n_users, config.n_items, config.rank
    interaction_sd = config.affinity_scale * math.sqrt(config.observable_share)
    hidden_sd = config.affinity_scale * math.sqrt(1.0 - config.observable_share)
    # <p_u, v_i> with p, v ~ N(0, s^2 I_d) has variance d * s^4; pick s for interaction_sd.
    factor_sd = math.sqrt(interaction_sd / math.sqrt(d))
    raw_user = rng.standard_normal((n_users, d))
    raw_item = rng.standard_normal((n_items, d))
    user_bias = config.user_bias_scale * rng.standard_normal(n_users)
    quality_z = rng.standard_normal(n_items)
    rho = config.popularity_quality_corr
    popularity = rho * quality_z + math.sqrt(1.0 - rho**2) * rng.standard_normal(n_items)
    exposure = config.exposure_concentration * popularity
    n_tail = int(round(config.tail_share * n_items))
    if n_tail > 0:
        tail = np.argsort(popularity, kind="stable")[:n_tail]
        exposure[tail] += math.log(config.tail_exposure)
    log_mean = math.log(config.mean_events) - config.length_sigma**2 / 2.0
    lengths = np.exp(log_mean + config.length_sigma * rng.standard_normal(n_users))
    lengths = np.clip(np.rint(lengths), config.min_events, n_items).astype(np.int64)
    span = config.time_span_days * _SECONDS_PER_DAY
    start_frac = rng.random(n_users)
    end_frac = start_frac + (1.0 - start_frac) * rng.random(n_users)
    active_start = config.start_time + np.floor(start_frac * span).astype(np.int64)
    active_end = config.start_time + np.floor(end_frac * span).astype(np.int64)

    def padded(values: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1, *values.shape[1:]), values.dtype), values])

    item_factors = padded(factor_sd * raw_item)
    user_factors = padded(factor_sd * raw_user)
    item_bias = padded(config.item_quality_scale * quality_z)
    affinity_sd = _affinity_sd(item_bias, user_factors, item_factors, hidden_sd)
    levels = np.empty(0) if config.continuous else np.arange(1.0, 6.0)
    return WorldParameters(
        rating_mean=config.rating_mean,
        user_bias=padded(user_bias),
        item_bias=item_bias,
        user_factors=user_factors,
        item_factors=item_factors,
        item_directions=padded(raw_item / np.linalg.norm(raw_item, axis=1, keepdims=True)),
        hidden_scale=hidden_sd,
        satiation=config.satiation,
        satiation_window=config.satiation_window,
        noise=config.noise,
        levels=levels,
        thresholds=np.empty(0) if config.continuous else np.arange(1.5, 5.0),
        low=1.0,
        high=5.0,
        exposure_logits=padded(exposure),
        affinity_weight=config.affinity_weight / affinity_sd if affinity_sd > 0 else 0.0,
        lengths=padded(lengths),
        active_start=padded(active_start),
        active_end=padded(active_end),
        exploration=config.exploration,
        session_length=config.session_length,
        session_gap_seconds=_WITHIN_SESSION_MEAN_GAP_S,
    )


# --- the generating model ---------------------------------------------------------------------


def _hidden(params: WorldParameters, seed: int, users: np.ndarray, items: np.ndarray) -> Any:
    if params.hidden_scale == 0.0:
        return 0.0
    return params.hidden_scale * _hash_normal(_key(seed, _STREAM_HIDDEN), users, items)


def _recent_directions(params: WorldParameters, recent: np.ndarray) -> np.ndarray | None:
    """Summed directions of the recent items [M, w] (0 = none): [M, d]; None without satiation."""
    if params.satiation == 0.0:
        return None
    total = np.zeros((recent.shape[0], params.item_directions.shape[1]))
    for lag in range(recent.shape[1]):  # fixed order: identical sums in every code path
        total += params.item_directions[recent[:, lag]]
    return total


def _latent_utility(
    params: WorldParameters,
    seed: int,
    users: np.ndarray,
    items: np.ndarray,
    recent_directions: np.ndarray | None,
) -> np.ndarray:
    """z(u, i, h) for flat users [N] and items [N]; `recent_directions` [N, d] are the summed
    directions of each event's recent items (`_recent_directions`)."""
    dot = np.einsum("nd,nd->n", params.user_factors[users], params.item_factors[items])
    z = params.rating_mean + params.user_bias[users] + params.item_bias[items] + dot
    z = z + _hidden(params, seed, users, items)
    if recent_directions is not None:
        similarity = np.einsum("nd,nd->n", params.item_directions[items], recent_directions)
        # sqrt(rank) * cosine has unit variance for unrelated items, whatever the rank.
        rank = params.item_directions.shape[1]
        z = z - params.satiation * math.sqrt(rank) / params.satiation_window * similarity
    return z


def _observe(params: WorldParameters, noisy_utility: np.ndarray) -> np.ndarray:
    """The reward a user reports for a noisy utility: ordinal level, or clipped value."""
    if params.continuous:
        return np.clip(noisy_utility, params.low, params.high)
    return params.levels[np.searchsorted(params.thresholds, noisy_utility, side="right")]


# Noise below this is treated as none in expectations (the error is below 1e-9 rating points;
# dividing by a denormal noise would overflow).
_TINY_NOISE = 1e-9


def _expected(params: WorldParameters, latent: np.ndarray) -> np.ndarray:
    """E[_observe(latent + noise * eps)] in closed form."""
    sigma = params.noise
    if params.continuous:
        if sigma < _TINY_NOISE:
            return np.clip(latent, params.low, params.high)

        # E[clip(X, a, b)] = a + sigma * (F(beta) - F(alpha)), F(s) = s (1 - Phi(s)) - phi(s)
        def antiderivative(s: np.ndarray) -> np.ndarray:
            density = np.exp(-0.5 * np.square(np.clip(s, -40.0, 40.0))) / math.sqrt(2 * math.pi)
            return s * scipy.special.ndtr(-s) - density

        alpha, beta = (params.low - latent) / sigma, (params.high - latent) / sigma
        return params.low + sigma * (antiderivative(beta) - antiderivative(alpha))
    steps = np.diff(params.levels)
    expected = np.full(latent.shape, params.levels[0])
    for step, threshold in zip(steps, params.thresholds, strict=True):
        if sigma < _TINY_NOISE:
            expected += step * (latent >= threshold)
        else:
            expected += step * scipy.special.ndtr((latent - threshold) / sigma)
    return expected


def _behaviour_sequences(
    params: WorldParameters, seed: int, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's consumed items in order: items [B, L_max] (1-based) and a validity mask.

    Sequential softmax sampling without replacement = Gumbel-top-k: perturb each logit with an
    independent Gumbel draw and read the items in decreasing order of perturbed logit.
    """
    logits = params.exposure_logits[1:][None, :]
    if params.affinity_weight != 0.0:
        all_items = np.arange(1, params.n_items + 1)
        affinity = params.item_bias[1:][None, :] + params.user_factors[users] @ (
            params.item_factors[1:].T
        )
        affinity = affinity + _hidden(params, seed, users[:, None], all_items[None, :])
        logits = logits + params.affinity_weight * affinity
    if params.exploration > 0.0:
        # Mixture (1 - eps) * softmax(logits) + eps / n_items, as log-weights for the Gumbel trick.
        logits = np.logaddexp(
            math.log1p(-params.exploration) + scipy.special.log_softmax(logits, axis=1),
            math.log(params.exploration / params.n_items),
        )
    uniform = _hash_uniform(
        _key(seed, _STREAM_GUMBEL), users[:, None], np.arange(1, params.n_items + 1)[None, :]
    )
    perturbed = logits - np.log(-np.log(uniform))  # + Gumbel(0, 1)
    lengths = params.lengths[users]
    longest = int(lengths.max()) if lengths.size else 0
    # Lengths are heavy-tailed: sort most users' top items only up to a typical length, and
    # the few long users fully. The result is the same either way (the order of perturbed
    # logits), so it does not depend on the block's other users.
    typical = min(longest, int(np.quantile(lengths, 0.95)) if lengths.size else 0)
    items = np.zeros((users.size, longest), dtype=np.int64)
    short = lengths <= typical
    items[short, :typical] = _top_indices(perturbed[short], typical) + 1
    items[~short] = _top_indices(perturbed[~short], longest) + 1
    valid = np.arange(longest)[None, :] < lengths[:, None]
    return np.where(valid, items, 0), valid


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k largest values, largest first: [B, k]."""
    if k == 0 or values.shape[0] == 0:
        return np.zeros((values.shape[0], k), dtype=np.int64)
    if k < values.shape[1]:
        top = np.argpartition(-values, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    order = np.argsort(-np.take_along_axis(values, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _recent_items(
    items: np.ndarray, rows: np.ndarray, positions: np.ndarray, window: int
) -> np.ndarray:
    """The `window` items consumed before position k of row b of items [B, L], for each
    (rows[n], positions[n]): [N, window], most recent first, 0 where the history is shorter."""
    recent = np.zeros((rows.size, window), dtype=np.int64)
    for lag in range(1, window + 1):
        has = positions >= lag
        recent[has, lag - 1] = items[rows[has], positions[has] - lag]
    return recent


def _timestamps(
    params: WorldParameters, seed: int, users: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Non-decreasing int64 timestamps of flat events (grouped by user, positions 0, 1, ...)
    in each user's active window: sessions of events seconds apart, spread over the window.

    Gaps are integer milliseconds, so per-user sums are exact whatever else is in the block
    (a user's timestamps must not depend on the other users generated with it).
    """
    new_session = (
        _hash_uniform(_key(seed, _STREAM_SESSION), users, positions) < 1.0 / params.session_length
    )
    gap_draw = -np.log(_hash_uniform(_key(seed, _STREAM_GAP), users, positions))
    later = positions > 0  # the first event opens the window; no gap before it
    within_ms = np.where(
        later & ~new_session, np.floor(gap_draw * params.session_gap_seconds * 1000.0), 0.0
    ).astype(np.int64)
    between_weight = np.where(later & new_session, np.floor(gap_draw * 1e6), 0.0).astype(np.int64)
    starts = np.flatnonzero(positions == 0)
    owner = np.cumsum(positions == 0) - 1  # index into `starts` of each event's user
    first_users = users[starts]
    window_ms = (params.active_end[first_users] - params.active_start[first_users]) * 1000
    free_ms = np.maximum(window_ms - np.add.reduceat(within_ms, starts), 0)
    total_weight = np.add.reduceat(between_weight, starts)
    ms_per_weight = np.divide(
        free_ms, total_weight, out=np.zeros(starts.size), where=total_weight > 0
    )
    between_ms = np.floor(between_weight * ms_per_weight[owner]).astype(np.int64)
    elapsed = np.cumsum(within_ms + between_ms)
    elapsed -= (elapsed - (within_ms + between_ms))[starts][owner]  # restart at each user
    times = params.active_start[users] + elapsed // 1000
    return np.minimum(times, params.active_end[users])


# --- fitting a world to a real log ------------------------------------------------------------

_REGULARIZATION_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class _FactorModel:
    mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        dot = np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items])
        return self.mean + self.user_bias[users] + self.item_bias[items] + dot


class _Groups:
    """Rows of a sparse ratings matrix: the events of each row, contiguous after sorting."""

    def __init__(self, rows: np.ndarray, n_rows: int) -> None:
        self.order = np.argsort(rows, kind="stable")
        self.bounds = np.searchsorted(rows[self.order], np.arange(n_rows + 2))
        self.n_rows = n_rows


def _als_half_step(
    groups: _Groups,
    cols: np.ndarray,
    targets: np.ndarray,
    col_factors: np.ndarray,
    regularization: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solve of every row's [factors, bias] given the other side's factors (ALS-WR)."""
    features = np.concatenate([col_factors[cols], np.ones((cols.size, 1))], axis=1)
    features, targets = features[groups.order], targets[groups.order]
    width = features.shape[1]
    gram = np.zeros((groups.n_rows + 1, width, width))
    rhs = np.zeros((groups.n_rows + 1, width))
    # One BLAS call per row (not per event): each row's Gram matrix X_r^T X_r. Faster than
    # a sparse-times-outer-product formulation by an order of magnitude, in bounded memory.
    for row in range(1, groups.n_rows + 1):
        lo, hi = groups.bounds[row], groups.bounds[row + 1]
        if hi > lo:
            block = features[lo:hi]
            gram[row] = block.T @ block
            rhs[row] = block.T @ targets[lo:hi]
    counts = np.diff(groups.bounds)[: groups.n_rows + 1]
    gram += regularization * (counts + 1.0)[:, None, None] * np.eye(width)[None]
    solution = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    solution[0] = 0.0  # padding row
    return solution[:, :-1], solution[:, -1]


def _fit_biased_mf(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    rank: int,
    regularization: float,
    n_iterations: int,
    rng: np.random.Generator,
) -> _FactorModel:
    """r ~ mean + b_u + q_i + <p_u, v_i> by alternating least squares."""
    mean = float(ratings.mean())
    user_groups, item_groups = _Groups(users, n_users), _Groups(items, n_items)
    user_factors = np.zeros((n_users + 1, rank))
    item_factors = 0.1 * rng.standard_normal((n_items + 1, rank))
    item_factors[0] = 0.0
    user_bias, item_bias = np.zeros(n_users + 1), np.zeros(n_items + 1)
    for _ in range(n_iterations):
        user_factors, user_bias = _als_half_step(
            user_groups, items, ratings - mean - item_bias[items], item_factors, regularization
        )
        item_factors, item_bias = _als_half_step(
            item_groups, users, ratings - mean - user_bias[users], user_factors, regularization
        )
    return _FactorModel(mean, user_bias, item_bias, user_factors, item_factors)


def _tie_share(users: np.ndarray, timestamps: np.ndarray) -> float:
    """Share of a user's consecutive events (in time order) that share a timestamp."""
    order = np.lexsort((timestamps, users))
    same_user = users[order][1:] == users[order][:-1]
    if not same_user.any():
        return 0.0
    return float(np.mean(np.diff(timestamps[order])[same_user] == 0))


def _session_gap_for_ties(tie_share: float, session_length: float) -> float:
    """Mean within-session gap (s) that gives `tie_share` equal consecutive timestamps.

    With an exponential gap of mean g and a uniform fractional second, two events share an
    integer timestamp with probability 1 - g (1 - exp(-1/g)); a share 1/session_length of
    gaps open a new session (never a tie).
    """
    in_session = 1.0 - 1.0 / session_length
    target = min(max(tie_share / in_session, 1e-3), 0.99)

    def ties(gap: float) -> float:
        return 1.0 - gap * -math.expm1(-1.0 / gap)

    return float(scipy.optimize.brentq(lambda g: ties(g) - target, 1e-3, 1e4))


def _heldout_mse(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    rank: int,
    regularization: float,
    n_iterations: int,
    seed: int,
) -> float:
    """Mean squared error on a random 10% of the events of the model fitted to the rest."""
    rng = np.random.default_rng(seed)
    heldout = rng.random(ratings.size) < 0.1
    if not heldout.any() or heldout.all():
        return float(np.var(ratings))
    fit = _fit_biased_mf(
        users[~heldout],
        items[~heldout],
        ratings[~heldout],
        n_users,
        n_items,
        rank,
        regularization,
        n_iterations,
        rng,
    )
    residual = ratings[heldout] - fit.predict(users[heldout], items[heldout])
    return float(np.mean(residual**2))


def _simulated_pairs(
    params: WorldParameters, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, recent) of every event the behaviour policy would log, in blocks."""
    users_out, items_out, recent_out = [], [], []
    block = _block_users(params.n_items)
    for first in range(1, params.n_users + 1, block):
        users = np.arange(first, min(first + block, params.n_users + 1))
        items_2d, valid = _behaviour_sequences(params, seed, users)
        rows, positions = np.nonzero(valid)
        users_out.append(users[rows])
        items_out.append(items_2d[rows, positions])
        recent_out.append(_recent_items(items_2d, rows, positions, params.satiation_window))
    return np.concatenate(users_out), np.concatenate(items_out), np.concatenate(recent_out)


def _calibrate_exposure(
    params: WorldParameters, target_counts: np.ndarray, seed: int, rounds: int
) -> WorldParameters:
    """Adjust item logits until simulated exposure counts follow the target counts."""
    logits = params.exposure_logits.copy()
    for _ in range(rounds):
        params = dataclasses.replace(params, exposure_logits=logits)
        _, items, _ = _simulated_pairs(params, seed)
        simulated = np.bincount(items, minlength=params.n_items + 1).astype(np.float64)
        logits = logits + np.log((target_counts + 0.5) / (simulated + 0.5))
        logits[0] = 0.0
    return dataclasses.replace(params, exposure_logits=logits)


def _calibrate_ratings(
    params: WorldParameters, real_rewards: np.ndarray, target_mse: float, seed: int
) -> WorldParameters:
    """Solve noise and thresholds: the simulated log's rating histogram matches the real one,
    and the mean rating variance around the truth equals `target_mse` (continuous rewards:
    the noise is sqrt(target_mse), clipping aside)."""
    if params.continuous:
        return dataclasses.replace(params, noise=math.sqrt(target_mse))
    users, items, recent = _simulated_pairs(params, seed)
    sample = np.random.default_rng(seed).permutation(users.size)[:50_000]
    latent = _latent_utility(
        params, seed, users[sample], items[sample], _recent_directions(params, recent[sample])
    )
    levels = params.levels
    cumulative = np.searchsorted(np.sort(real_rewards), levels[:-1], side="right")
    cumulative = cumulative / real_rewards.size  # P(r <= level_k), k < last

    def thresholds_for(sigma: float) -> np.ndarray:
        cuts = []
        for share in cumulative:
            share = min(max(share, 1e-6), 1 - 1e-6)
            lo, hi = latent.min() - 10 * sigma - 10, latent.max() + 10 * sigma + 10
            cuts.append(
                scipy.optimize.brentq(
                    lambda t, s=share: float(np.mean(scipy.special.ndtr((t - latent) / sigma))) - s,
                    lo,
                    hi,
                    xtol=1e-9,
                )
            )
        return np.maximum.accumulate(np.array(cuts))

    def noise_variance(sigma: float) -> float:
        candidate = dataclasses.replace(params, noise=sigma, thresholds=thresholds_for(sigma))
        mean = _expected(candidate, latent)
        second = levels[0] ** 2 + np.zeros_like(latent)
        for k in range(levels.size - 1):
            p_above = scipy.special.ndtr((latent - candidate.thresholds[k]) / sigma)
            second += (levels[k + 1] ** 2 - levels[k] ** 2) * p_above
        return float(np.mean(second - mean**2))

    low, high = 1e-3, 20.0
    if noise_variance(low) >= target_mse:
        sigma = low
    elif noise_variance(high) <= target_mse:
        sigma = high
    else:
        sigma = scipy.optimize.brentq(
            lambda s: noise_variance(s) - target_mse, low, high, xtol=1e-4
        )
    return dataclasses.replace(params, noise=sigma, thresholds=thresholds_for(sigma))
