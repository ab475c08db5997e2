"""`RejectionSampler`: the behaviour policy's sequences without a pass over the whole catalog.

The Gumbel-top-k path (`model.behaviour_sequences`) perturbs every item's logit for every user:
O(n_items) per user, ~0.3 s for 4 users at 10^6 items, so 10^5 users would take hours. This
draws from the same law in O(events) per user:

- sequential sampling without replacement from w_u = (1 - eps) softmax(l_u) + eps / n_items is
  drawing from w_u *with* replacement and skipping items already drawn (exact: the first draw
  that is new is distributed as w_u restricted to the new items);
- one draw from w_u: with probability eps a uniform item, else one draw from softmax(l_u);
- softmax(l_u) with l_u(i) = x_i + a (<p_u, v_i> + e(u, i)) (x = exposure + a * quality, a the
  affinity weight, e the hidden taste) by rejection: propose i with probability proportional
  to exp(x_i + g ||v_i||), accept with probability exp(a <p_u, v_i> - g ||v_i||) *
  exp(a e(u, i) - |a| h z_max) <= 1, where g >= |a| ||p_u|| (Cauchy-Schwarz) and |e| <= h z_max
  (h the hidden scale, z_max the largest normal the hash can produce, 8.2). g is the user's
  |a| ||p_u|| rounded up to one of `levels` values, so a few proposal CDFs serve every user.

The acceptance rate is what it costs: near 1 without taste, e^(-|a| h z_max) from the hidden
term alone (0.05 with the defaults), so worlds without hidden taste (`observable_share = 1`,
e.g. the `learnable` preset) sample fastest. Random numbers are counter-based hashes of
(seed, stream, user, draw), so a user's sequence does not depend on the other users.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from rmdiag.simulate.hashing import (
    STREAM_ACCEPT,
    STREAM_BRANCH,
    STREAM_EXPLORE,
    STREAM_HIDDEN,
    STREAM_PROPOSAL,
    hash_normal,
    hash_uniform,
    stream_key,
)
from rmdiag.simulate.parameters import WorldParameters

# The largest value hash_uniform returns below 1, so |hash_normal| <= ndtri of it (8.21).
_LARGEST_NORMAL = float(scipy.special.ndtri(np.nextafter(1.0, 0.0)))


class RejectionSampler:
    """Exact draws of the behaviour policy's sequences (module docstring).

    Args:
        params: the world's parameters.
        levels: how many proposal distributions (values of g) to precompute: each is one
            float64 CDF over the catalog (8 MB at 10^6 items); more levels, tighter bounds.
    """

    def __init__(self, params: WorldParameters, levels: int = 16) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.params = params
        weight = params.affinity_weight
        self.base = params.exposure_logits[1:] + weight * params.item_bias[1:]
        self.norms = np.linalg.norm(params.item_factors[1:], axis=1)
        reach = abs(weight) * np.linalg.norm(params.user_factors, axis=1)  # |a| ||p_u||
        top = float(reach.max())
        self.grid = top * np.arange(1, levels + 1) / levels if top > 0 else np.zeros(1)
        # the smallest level g >= |a| ||p_u||, per user id
        self.level = np.minimum(np.searchsorted(self.grid, reach, side="left"), self.grid.size - 1)
        self._cdfs: dict[int, np.ndarray] = {}
        self.hidden_bound = abs(weight) * params.hidden_scale * _LARGEST_NORMAL
        self.proposals = 0  # proposals made and accepted so far (the acceptance rate)
        self.accepted = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposals if self.proposals else float("nan")

    def _cdf(self, level: int) -> np.ndarray:
        if level not in self._cdfs:
            logits = self.base + self.grid[level] * self.norms
            cdf = np.cumsum(np.exp(logits - logits.max()))
            self._cdfs[level] = cdf / cdf[-1]
        return self._cdfs[level]

    def _softmax_draws(self, seed: int, user: int, start: int, n: int) -> tuple[np.ndarray, int]:
        """Accepted draws from softmax(l_u) among proposals start..start+n-1, in order."""
        params = self.params
        draws = np.arange(start, start + n)
        level = int(self.level[user])
        cdf = self._cdf(level)
        uniform = hash_uniform(stream_key(seed, STREAM_PROPOSAL), user, draws)
        items = np.minimum(np.searchsorted(cdf, uniform, side="right"), params.n_items - 1) + 1
        weight = params.affinity_weight
        log_ratio = (weight * (params.item_factors[items] @ params.user_factors[user])
                     - self.grid[level] * self.norms[items - 1])
        if params.hidden_scale != 0.0:  # the oracle's own hidden term e(u, i)
            hidden = params.hidden_scale * hash_normal(stream_key(seed, STREAM_HIDDEN), user, items)
            log_ratio = log_ratio + weight * hidden - self.hidden_bound
        accept = np.log(hash_uniform(stream_key(seed, STREAM_ACCEPT), user, draws)) < log_ratio
        self.proposals += n
        self.accepted += int(accept.sum())
        return items[accept], start + n

    def sequence(self, seed: int, user: int, length: int) -> np.ndarray:
        """User `user`'s first `length` distinct items, in the order consumed."""
        params = self.params
        length = min(length, params.n_items)
        chosen: list[int] = []
        seen: set[int] = set()
        pool = np.zeros(0, dtype=np.int64)  # accepted softmax draws not used yet, in order
        proposed = drawn = 0
        rate = 1.0  # running acceptance rate of this user's proposals, sizes the next batch
        while len(chosen) < length:
            n = 2 * (length - len(chosen)) + 8
            draws = np.arange(drawn, drawn + n)
            drawn += n
            branch = hash_uniform(stream_key(seed, STREAM_BRANCH), user, draws)
            explore = branch < params.exploration
            n_softmax = int((~explore).sum())
            while pool.size < n_softmax:
                want = int(np.ceil((n_softmax - pool.size) / max(rate, 1e-4) * 1.2)) + 8
                more, end = self._softmax_draws(seed, user, proposed, want)
                rate = max(more.size, 1) / want if proposed == 0 else (
                    0.5 * rate + 0.5 * max(more.size, 1) / want)
                proposed = end
                pool = np.concatenate([pool, more])
            items = np.empty(n, dtype=np.int64)
            uniform = hash_uniform(stream_key(seed, STREAM_EXPLORE), user, draws[explore])
            items[explore] = np.minimum((uniform * params.n_items).astype(np.int64),
                                        params.n_items - 1) + 1
            items[~explore], pool = pool[:n_softmax], pool[n_softmax:]
            for item in items.tolist():
                if item not in seen:
                    seen.add(item)
                    chosen.append(item)
                    if len(chosen) == length:
                        break
        return np.asarray(chosen, dtype=np.int64)

    def sequences(
        self, seed: int, users: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items [B, max length] (1-based, 0 after each user's end) and the validity mask, as
        `model.behaviour_sequences` returns them."""
        longest = int(lengths.max()) if lengths.size else 0
        items = np.zeros((users.size, longest), dtype=np.int64)
        for row, (user, length) in enumerate(zip(users.tolist(), lengths.tolist(), strict=True)):
            drawn = self.sequence(seed, user, length)
            items[row, : drawn.size] = drawn
        valid = np.arange(longest)[None, :] < lengths[:, None]
        return items, valid
