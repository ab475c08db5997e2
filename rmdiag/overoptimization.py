"""The best-of-n over-optimization curve (DESIGN.md, Selection; after Gao et al. 2022, "Scaling
laws for reward model overoptimization", and Coste et al. 2024, "Reward model ensembles help
mitigate overoptimization").

How much optimization against the reward model (the *proxy*) does it take before a *gold*
reward stops following it? Best-of-n is the simplest optimizer with a known KL from the
starting policy: draw n items from the SFT policy π(·|s), keep the one the proxy scores
highest. As n grows the pick moves away from π (KL = log n − (n − 1)/n, the analytic
best-of-n bound) and the proxy's value of it rises by construction; the gold's value rises too
while the proxy is right, and stops (or falls) where optimizing the proxy exploits its errors.

`overoptimization_curve(policy, context, proxy, gold, ...)` computes it:

- For each evaluation user (one row of `context` per user: the user's whole training history,
  i.e. the validation events' context, never the test events) it draws `n_max` = 64 items from
  π(·|s) -- the softmax of the policy's logits with the padding item and the user's history
  excluded -- with a seeded `torch.Generator`, and scores all of them with the proxy and the
  gold (`RewardFn`s, `(context, items[B, K]) -> [B, K]`, in the policy's ids).
- For each n in 1, 2, 4, ..., 64 it takes each user's *expected* proxy and gold value of the
  proxy's argmax over n items drawn from the 64, exactly: a random n-subset of 64 iid draws is
  n iid draws, and with the 64 sorted by proxy the j-th lowest is the subset's maximum with
  probability C(j − 1, n − 1) / C(64, n) (`best_of_n_weights`). Ties in the proxy are broken
  uniformly at random, in expectation (the gold of tied items is averaged within each tie).
  This is the unbiased U-statistic, not one random subset.
- Per-user values -> mean over users with a BCa bootstrap interval
  (`evaluators.intervals.mean_interval`, users resampled), as `rmdiag.policies` summarizes.

`gold_peak_n`: the smallest n of the grid whose doubling does not raise the gold significantly
-- a paired one-sided t-test across users of gold(2n) − gold(n) > 0, p ≥ `alpha` -- or `n_max`
when every doubling does (the gold rises all the way). The doubling tests are not adjusted
for multiplicity: each one only moves the peak earlier, which makes the over-optimization
guard of `rmdiag.select` *more* conservative about PPO, the direction it errs on.

`proxy_gold_gap` is the paired mean of proxy − gold at n_max. Because proxy and gold can differ
in level (a calibrated offset is not over-optimization), the figures that follow the peak are
paired differences too: `proxy_after_peak` = proxy(n_max) − proxy(peak),
`gold_after_peak` = gold(n_max) − gold(peak), and `divergence` = their difference (how much
the proxy-gold gap widened after the gold's peak) with its one-sided p-value of being > 0.
`rmdiag.select` reads `gold_peak_n` and `divergence`.

The gold: on a simulated world its true expected reward (`World.true_reward` through the log's
ids, `rmdiag.policies.EncodedReward`), and the proxy is the audited ensemble. On real data there
is no true reward: `half_ensembles` splits the training users in two halves (a fixed seed),
fits the proxy ensemble on one and a judge ensemble (the gold) on the other, both with the
audit's settings; the curve is then evaluated on every user's validation context (each user is
out of sample for one of the two). That gold is an approximation -- the judge shares the
proxy's model class and the log's exposure bias -- and the output says so (`gold_kind`).
External predictions files cannot score sampled items, so an audit whose verdict is on one has
no curve (`unavailable`); an external `RewardFn` can be the proxy.

Layer: after `rmdiag.policies` (it samples from a trained policy), before `rmdiag.report`; the
audit stores the curve (`AuditResult.overoptimization`) and `rmdiag.select` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats
import torch

from evaluators.intervals import mean_interval
from rmdiag.audit import AuditConfig, Figure
from rmdiag.audit.models import fit_models
from rmdiag.data import Interactions
from rmdiag.policies import PolicyData
from rmdiag.rewards import RewardEnsemble
from rmdiag.rewards.base import torch_threads
from trainers import Context, RewardFn, SequentialRecommender, policy_scores

N_MAX = 64
GOLD_TRUE = "true reward"
GOLD_JUDGE = "judge ensemble fitted on a disjoint half of the users (an approximation)"
PROXY_HALF = "ensemble fitted on the other half of the users, with the audit's settings"
INTERVAL = "bca bootstrap over users"
# The seed of the halves' user split: fixed, so that a curve does not move with `--seed`
# between runs that only change the models' seeds.
HALF_SPLIT_SEED = 20240101


def n_grid(n_max: int = N_MAX) -> list[int]:
    """1, 2, 4, ..., n_max (a power of two)."""
    if n_max < 2 or n_max & (n_max - 1):
        raise ValueError(f"n_max must be a power of two >= 2, got {n_max}")
    return [2**i for i in range(int(math.log2(n_max)) + 1)]


def best_of_n_kl(n: int) -> float:
    """The analytic KL(best-of-n ‖ π) bound, log n − (n − 1)/n (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n_weights(m: int, ns: Sequence[int]) -> np.ndarray:
    """[len(ns), m]: row n, column j (0-based, by ascending proxy) is the probability that the
    (j+1)-th lowest of m items is the highest of a uniformly random n-subset,
    C(j, n − 1) / C(m, n). Each row sums to 1."""
    out = np.zeros((len(ns), m))
    for row, n in enumerate(ns):
        if not 1 <= n <= m:
            raise ValueError(f"n must be in 1..{m}, got {n}")
        total = math.comb(m, n)
        out[row] = [math.comb(j, n - 1) / total for j in range(m)]
    return out


def best_of_n_values(proxy: np.ndarray, gold: np.ndarray,
                     ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's expected proxy and gold value of the proxy's argmax over n of its m samples
    (a uniformly random n-subset; proxy ties broken uniformly at random): two [len(ns), U]
    arrays, from `proxy` and `gold` [U, m]."""
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if proxy.shape != gold.shape or proxy.ndim != 2:
        raise ValueError(f"proxy and gold must be [U, m] alike, got {proxy.shape}, {gold.shape}")
    order = np.argsort(proxy, axis=1, kind="stable")
    p = np.take_along_axis(proxy, order, axis=1)
    g = np.take_along_axis(gold, order, axis=1)
    # within a run of equal proxy values every order is equally likely: each position of the run
    # holds the run's mean gold in expectation
    starts = np.ones_like(p, dtype=bool)
    starts[:, 1:] = p[:, 1:] != p[:, :-1]
    run = np.cumsum(starts, axis=1) - 1  # run index within the row
    runs = run + (np.arange(len(p)) * p.shape[1])[:, None]  # unique over the whole array
    flat = runs.ravel()
    sums = np.bincount(flat, weights=g.ravel(), minlength=p.size)
    counts = np.bincount(flat, minlength=p.size)
    g = (sums[flat] / counts[flat]).reshape(g.shape)
    weights = best_of_n_weights(p.shape[1], ns)
    return weights @ p.T, weights @ g.T


def one_sided_p(differences: np.ndarray) -> float:
    """p-value of a paired one-sided t-test that the mean difference is > 0; for constant
    differences (no spread) 0 when they are positive, else 1."""
    d = np.asarray(differences, dtype=np.float64)
    if np.all(d == d[0]):
        return 0.0 if d[0] > 0 else 1.0
    return float(scipy.stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def user_contexts(context: Context) -> Context:
    """The first row of each user (the validation events of one user share one context: their
    whole training history)."""
    _, first = np.unique(context.users.numpy(), return_index=True)
    return context.index(torch.from_numpy(np.sort(first)))


def sample_items(model: SequentialRecommender, context: Context, n: int, seed: int,
                 batch_users: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """n items per user drawn (with replacement) from the policy's softmax over the catalog,
    the padding item and the user's history excluded: (LongTensor[U', n], the rows of
    `context` kept -- users with every item in their history have nothing to draw)."""
    generator = torch.Generator().manual_seed(seed)
    draws, kept = [], []
    for start in range(0, len(context), batch_users):
        rows = context.index(slice(start, start + batch_users))
        scores = policy_scores(model, rows, exclude_history=True).double()
        ok = torch.isfinite(scores).any(1)
        probabilities = torch.softmax(scores[ok], dim=1)
        if len(probabilities):
            draws.append(torch.multinomial(probabilities, n, replacement=True,
                                           generator=generator))
        kept.append(start + np.flatnonzero(ok.numpy()))
    items = torch.cat(draws) if draws else torch.empty(0, n, dtype=torch.long)
    return items, np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)


def score_items(reward_fn: RewardFn, context: Context, items: torch.Tensor,
                batch_users: int = 256) -> np.ndarray:
    """reward_fn of each (user, item) as float64 [U, K], in chunks of users."""
    with torch.no_grad():
        parts = [reward_fn(context.index(slice(s, s + batch_users)), items[s:s + batch_users])
                 .double().numpy() for s in range(0, len(context), batch_users)]
    return np.concatenate(parts) if parts else np.empty(tuple(items.shape))


def unavailable(reason: str) -> dict[str, Any]:
    """The curve's JSON when it cannot be computed: only the reason."""
    return {"reason": reason}


def external_reason(name: str) -> str:
    """Why an audit whose verdict is on a predictions file has no curve."""
    return (f"the verdict is on '{name}', given as predictions of the held-out events: they "
            "cannot score the items the SFT policy draws")


def _figure(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Figure:
    result = mean_interval(values, "bca", confidence, n_resamples, seed)
    return Figure(float(result.value), float(min(result.low, result.value)),
                  float(max(result.high, result.value)))


def overoptimization_curve(
    policy: SequentialRecommender,
    context: Context,
    proxy: RewardFn,
    gold: RewardFn,
    gold_kind: str,
    *,
    proxy_kind: str = "the audited reward-model ensemble",
    n_max: int = N_MAX,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The best-of-n curve of `policy` against `proxy`, scored by `gold` (module docstring), as
    the JSON `audit.json["overoptimization"]` holds: `n`, `kl`, `proxy` and `gold` (a figure per
    n), `gold_peak_n`, `proxy_gold_gap` (at n_max), `proxy_after_peak`, `gold_after_peak`,
    `divergence` (with `p_value`), `gold_kind`, `proxy_kind`, `users`, and the settings.
    `context`: one row per evaluation user (`user_contexts`)."""
    ns = n_grid(n_max)
    items, kept = sample_items(policy, context, n_max, seed)
    if len(kept) < 2:
        return unavailable(f"{len(kept)} evaluation users with items to draw; an interval "
                           "needs at least 2")
    context = context.index(torch.from_numpy(kept))
    proxy_values, gold_values = best_of_n_values(score_items(proxy, context, items),
                                                 score_items(gold, context, items), ns)

    def figure(values: np.ndarray) -> Figure:
        return _figure(values, confidence, n_resamples, seed)

    peak = len(ns) - 1
    for i in range(len(ns) - 1):
        if not one_sided_p(gold_values[i + 1] - gold_values[i]) < alpha:
            peak = i
            break
    proxy_after = proxy_values[-1] - proxy_values[peak]
    gold_after = gold_values[-1] - gold_values[peak]
    return {
        "n": ns,
        "kl": [best_of_n_kl(n) for n in ns],
        "proxy": [figure(v).as_dict() for v in proxy_values],
        "gold": [figure(v).as_dict() for v in gold_values],
        "gold_peak_n": ns[peak],
        "proxy_gold_gap": figure(proxy_values[-1] - gold_values[-1]).as_dict(),
        "proxy_after_peak": figure(proxy_after).as_dict(),
        "gold_after_peak": figure(gold_after).as_dict(),
        "divergence": figure(proxy_after - gold_after).as_dict()
        | {"p_value": one_sided_p(proxy_after - gold_after)},
        "gold_kind": gold_kind,
        "proxy_kind": proxy_kind,
        "users": len(kept),
        "samples": n_max,
        "alpha": alpha,
        "confidence": confidence,
        "interval": INTERVAL,
        "peak_test": "smallest n whose doubling does not raise the gold: paired one-sided "
                     "t-test of gold(2n) - gold(n) > 0 across users, p >= alpha",
    }


def half_ensembles(train: Interactions, config: AuditConfig,
                   seed: int = HALF_SPLIT_SEED) -> tuple[RewardEnsemble, RewardEnsemble]:
    """(proxy, judge): reward-model ensembles fitted with the audit's settings on two disjoint
    halves of the training users (drawn with `seed`), for the curve on real data."""
    users = np.unique(train.users)
    shuffled = np.random.default_rng(seed).permutation(users)
    half = np.isin(train.users, shuffled[: len(users) // 2])
    with torch_threads(1):  # as the audit fits: one thread per member
        _, proxy = fit_models(train.take(~half), config)
        _, judge = fit_models(train.take(half), config)
    return proxy, judge


def audit_curve(
    policy: SequentialRecommender,
    data: PolicyData,
    config: AuditConfig,
    *,
    alpha: float,
    ensemble: RewardFn | None = None,
    true_reward: RewardFn | None = None,
    external: str | None = None,
) -> dict[str, Any]:
    """The curve as `rmdiag run` and `rmdiag audit` compute it for audit.json, on `data.valid`'s
    contexts (one per user; never the test events): with `true_reward` (a simulated world) the
    proxy is `ensemble` (the audited one) and the gold the true reward; without, the proxy and
    a judge are fitted on two halves of `data.log`'s users (`half_ensembles`). Intervals at the
    audit's confidence and resamples, drawn with its seed; `alpha` is the selection's (the
    peak's test). `external` names the model the verdict is on when it is a predictions file:
    then the curve is unavailable, with the reason."""
    if external is not None:
        return unavailable(external_reason(external))
    if true_reward is not None:
        if ensemble is None:
            return unavailable("no reward model was fitted to act as the proxy")
        proxy, gold, gold_kind, proxy_kind = (ensemble, true_reward, GOLD_TRUE,
                                              "the audited reward-model ensemble")
    else:
        proxy, gold = half_ensembles(data.log, config)
        gold_kind, proxy_kind = GOLD_JUDGE, PROXY_HALF
    return overoptimization_curve(
        policy, user_contexts(data.valid.context), proxy, gold, gold_kind,
        proxy_kind=proxy_kind, alpha=alpha, confidence=config.confidence,
        n_resamples=config.n_resamples, seed=config.seed)
