"""`WorldParameters`, the arrays that define a world, and drawing them from a config."""

import math
from dataclasses import dataclass

import numpy as np

from rmdiag.simulate.config import SimulationConfig

_SECONDS_PER_DAY = 86_400
# Mean gap between two events of one session. A few seconds, so that integer timestamps of
# consecutive events often coincide, as they do in MovieLens (users rate in bursts).
_WITHIN_SESSION_MEAN_GAP_S = 2.0


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


# --- building a world from a config -----------------------------------------------------------


def population_affinity_sd(
    item_bias: np.ndarray, user_factors: np.ndarray, item_factors: np.ndarray, hidden: float
) -> float:
    """Population sd of a(u, i) = q_i + <p_u, v_i> + e(u, i) over users x items (exact)."""
    u, v = user_factors[1:], item_factors[1:]
    second_moment = float(np.sum((u.T @ u / u.shape[0]) * (v.T @ v / v.shape[0])))
    dot_var = second_moment - float(u.mean(0) @ v.mean(0)) ** 2
    mean_dot = u.mean(0)  # covariance of q_i with <p_u, v_i> over items, at the mean user
    cross = 2.0 * float(np.mean((item_bias[1:] - item_bias[1:].mean()) * (v @ mean_dot)))
    return math.sqrt(max(float(np.var(item_bias[1:])) + dot_var + cross + hidden**2, 0.0))


def draw_parameters(config: SimulationConfig) -> WorldParameters:
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
    affinity_sd = population_affinity_sd(item_bias, user_factors, item_factors, hidden_sd)
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
