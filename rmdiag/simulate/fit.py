"""Fitting a world to a real log: `world_from_interactions` (semi-synthetic worlds)."""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.optimize
import scipy.special

from rmdiag.simulate.config import SimulationConfig
from rmdiag.simulate.model import (
    behaviour_sequences,
    block_users,
    expected_reward,
    latent_utility,
    recent_items,
    summed_recent_directions,
)
from rmdiag.simulate.parameters import WorldParameters, population_affinity_sd
from rmdiag.simulate.world import World


def world_from_interactions(
    table: pa.Table,
    rank: int = 16,
    seed: int = 0,
    *,
    regularization: float | None = None,
    n_iterations: int = 12,
    affinity_weight: float = 1.0,
    calibration_rounds: int = 12,
    match_learnability: bool = True,
) -> World:
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
                f"world_from_interactions: missing column {name!r}; got {table.column_names}"
            )
    if table.num_rows == 0:
        raise ValueError("world_from_interactions: the table is empty")
    raw_users, users = np.unique(table["user_id"].to_numpy(), return_inverse=True)
    raw_items, items = np.unique(table["item_id"].to_numpy(), return_inverse=True)
    users, items = users.astype(np.int64) + 1, items.astype(np.int64) + 1
    rewards = table["reward"].to_numpy().astype(np.float64)
    timestamps = table["timestamp"].to_numpy().astype(np.int64)
    bad = ~np.isfinite(rewards)
    if bad.any():
        raise ValueError(
            f"world_from_interactions: column 'reward' has a non-finite value at row "
            f"{int(np.argmax(bad))}"
        )
    n_users, n_items = raw_users.size, raw_items.size
    if n_items < 2:
        raise ValueError("world_from_interactions: need at least 2 distinct items")

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
    affinity_sd = population_affinity_sd(fit.item_bias, fit.user_factors, fit.item_factors, 0.0)
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
        simulated = World(probe_config, parameters=params).generate()
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
    world = World(config, parameters=params)
    world.raw_user_ids = np.concatenate([raw_users[:1], raw_users])
    world.raw_item_ids = np.concatenate([raw_items[:1], raw_items])
    return world


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
    block = block_users(params.n_items)
    for first in range(1, params.n_users + 1, block):
        users = np.arange(first, min(first + block, params.n_users + 1))
        items_2d, valid = behaviour_sequences(params, seed, users)
        rows, positions = np.nonzero(valid)
        users_out.append(users[rows])
        items_out.append(items_2d[rows, positions])
        recent_out.append(recent_items(items_2d, rows, positions, params.satiation_window))
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
    latent = latent_utility(
        params, seed, users[sample], items[sample], summed_recent_directions(params, recent[sample])
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
        mean = expected_reward(candidate, latent)
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
