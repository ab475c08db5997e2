"""The generating model: latent utility, the rating model and its closed-form expectation,
the behaviour policy's sequences and the event timestamps (see `rmdiag.simulate`)."""

import math
from typing import Any

import numpy as np
import scipy.special

from rmdiag.simulate.hashing import (
    STREAM_GAP,
    STREAM_GUMBEL,
    STREAM_HIDDEN,
    STREAM_SESSION,
    hash_normal,
    hash_uniform,
    stream_key,
)
from rmdiag.simulate.parameters import WorldParameters

# Users x items per internal block: the policy's [block, n_items] arrays then take ~160 MB.
_BLOCK_CELLS = 4_000_000


def block_users(n_items: int) -> int:
    return max(1, min(2048, _BLOCK_CELLS // n_items))


# --- the generating model ---------------------------------------------------------------------


def _hidden(params: WorldParameters, seed: int, users: np.ndarray, items: np.ndarray) -> Any:
    if params.hidden_scale == 0.0:
        return 0.0
    return params.hidden_scale * hash_normal(stream_key(seed, STREAM_HIDDEN), users, items)


def summed_recent_directions(params: WorldParameters, recent: np.ndarray) -> np.ndarray | None:
    """Summed directions of the recent items [M, w] (0 = none): [M, d]; None without satiation."""
    if params.satiation == 0.0:
        return None
    total = np.zeros((recent.shape[0], params.item_directions.shape[1]))
    for lag in range(recent.shape[1]):  # fixed order: identical sums in every code path
        total += params.item_directions[recent[:, lag]]
    return total


def latent_utility(
    params: WorldParameters,
    seed: int,
    users: np.ndarray,
    items: np.ndarray,
    recent_directions: np.ndarray | None,
) -> np.ndarray:
    """z(u, i, h) for flat users [N] and items [N]; `recent_directions` [N, d] are the summed
    directions of each event's recent items (`summed_recent_directions`)."""
    dot = np.einsum("nd,nd->n", params.user_factors[users], params.item_factors[items])
    z = params.rating_mean + params.user_bias[users] + params.item_bias[items] + dot
    z = z + _hidden(params, seed, users, items)
    if recent_directions is not None:
        similarity = np.einsum("nd,nd->n", params.item_directions[items], recent_directions)
        # sqrt(rank) * cosine has unit variance for unrelated items, whatever the rank.
        rank = params.item_directions.shape[1]
        z = z - params.satiation * math.sqrt(rank) / params.satiation_window * similarity
    return z


def observe(params: WorldParameters, noisy_utility: np.ndarray) -> np.ndarray:
    """The reward a user reports for a noisy utility: ordinal level, or clipped value."""
    if params.continuous:
        return np.clip(noisy_utility, params.low, params.high)
    return params.levels[np.searchsorted(params.thresholds, noisy_utility, side="right")]


# Noise below this is treated as none in expectations (the error is below 1e-9 rating points;
# dividing by a denormal noise would overflow).
_TINY_NOISE = 1e-9


def expected_reward(params: WorldParameters, latent: np.ndarray) -> np.ndarray:
    """E[observe(latent + noise * eps)] in closed form."""
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


def behaviour_log_weights(
    params: WorldParameters, seed: int, users: np.ndarray, hidden: bool = True
) -> np.ndarray:
    """Log-weights of the behaviour policy over items 1..n_items, [B, n_items] (or [1, n_items]
    when they do not depend on the user): the log of (1 - exploration) * softmax(logits) +
    exploration / n_items, up to a per-row constant. `hidden=False` leaves the hidden per-pair
    taste out of the affinity (what a model of the log could at best learn of it)."""
    logits = params.exposure_logits[1:][None, :]
    if params.affinity_weight != 0.0:
        all_items = np.arange(1, params.n_items + 1)
        affinity = params.item_bias[1:][None, :] + params.user_factors[users] @ (
            params.item_factors[1:].T
        )
        if hidden:
            affinity = affinity + _hidden(params, seed, users[:, None], all_items[None, :])
        logits = logits + params.affinity_weight * affinity
    if params.exploration > 0.0:
        # Mixture (1 - eps) * softmax(logits) + eps / n_items, as log-weights for the Gumbel trick.
        logits = np.logaddexp(
            math.log1p(-params.exploration) + scipy.special.log_softmax(logits, axis=1),
            math.log(params.exploration / params.n_items),
        )
    return logits


def behaviour_sequences(
    params: WorldParameters, seed: int, users: np.ndarray, sampler: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's consumed items in order: items [B, L_max] (1-based) and a validity mask.

    Sequential softmax sampling without replacement = Gumbel-top-k: perturb each logit with an
    independent Gumbel draw and read the items in decreasing order of perturbed logit. That
    costs O(n_items) per user; a `rmdiag.simulate.rejection.RejectionSampler` as ``sampler``
    draws from the same distribution in O(events) instead (other draws, same law).
    """
    lengths = params.lengths[users]
    if sampler is not None:
        return sampler.sequences(seed, users, lengths)
    logits = behaviour_log_weights(params, seed, users)
    uniform = hash_uniform(
        stream_key(seed, STREAM_GUMBEL), users[:, None], np.arange(1, params.n_items + 1)[None, :]
    )
    perturbed = logits - np.log(-np.log(uniform))  # + Gumbel(0, 1)
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


def recent_items(
    items: np.ndarray, rows: np.ndarray, positions: np.ndarray, window: int
) -> np.ndarray:
    """The `window` items consumed before position k of row b of items [B, L], for each
    (rows[n], positions[n]): [N, window], most recent first, 0 where the history is shorter."""
    recent = np.zeros((rows.size, window), dtype=np.int64)
    for lag in range(1, window + 1):
        has = positions >= lag
        recent[has, lag - 1] = items[rows[has], positions[has] - lag]
    return recent


def event_timestamps(
    params: WorldParameters, seed: int, users: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Non-decreasing int64 timestamps of flat events (grouped by user, positions 0, 1, ...)
    in each user's active window: sessions of events seconds apart, spread over the window.

    Gaps are integer milliseconds, so per-user sums are exact whatever else is in the block
    (a user's timestamps must not depend on the other users generated with it).
    """
    new_session = (
        hash_uniform(stream_key(seed, STREAM_SESSION), users, positions)
        < 1.0 / params.session_length
    )
    gap_draw = -np.log(hash_uniform(stream_key(seed, STREAM_GAP), users, positions))
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
