"""Counter-based random numbers: each is a hash of (seed, stream, a, b), nothing else.

That is what lets a user's events not depend on which other users are generated with it.
"""

import numpy as np
import scipy.special

# splitmix64's finalizer: a bijective mix of 64 bits with full avalanche. A random number of
# (seed, stream, a, b) is mix(mix(mix(key(seed, stream)) + a * G) + b * G), so it depends on
# nothing but those four integers.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
STREAM_GUMBEL, STREAM_HIDDEN, STREAM_NOISE, STREAM_SESSION, STREAM_GAP = 1, 2, 3, 4, 5
STREAM_HOLDOUT_ITEMS, STREAM_HOLDOUT_NOISE, STREAM_MISSPECIFIED = 6, 7, 8
# the rejection sampler of the behaviour policy (`rmdiag.simulate.rejection`)
STREAM_BRANCH, STREAM_EXPLORE, STREAM_PROPOSAL, STREAM_ACCEPT = 9, 10, 11, 12


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def stream_key(seed: int, stream: int) -> np.ndarray:
    """A 1-element uint64 array (arrays wrap on overflow silently; numpy scalars warn)."""
    base = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    return _mix(_mix(base) + np.array([stream], dtype=np.uint64) * _GOLDEN)


def hash_uniform(key: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) (open interval) numbers, one per broadcast element of (a, b)."""
    ha = _mix(key + np.asarray(a).astype(np.uint64) * _GOLDEN)
    h = _mix(ha + np.asarray(b).astype(np.uint64) * _GOLDEN)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def hash_normal(key: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return scipy.special.ndtri(hash_uniform(key, a, b))
