"""The figures a selection rule can read (``SelectConfig.rule``), all known before post-training.

``rmdiag run`` chooses the algorithm after the audit and SFT and before it post-trains anything,
so a rule may read the audit's figures, what the training log alone says about its exposure and
what the audited ensemble predicts a pessimistic policy would gain over SFT -- never a figure of a
post-trained policy, and never the true reward. ``FEATURES`` names and describes each;
``selection_features`` computes the ones a rule names (the greedy figures cost a judge pass over
the test users' contexts and an ensemble pass over the held-out events, so they are computed
only when asked for). The selection study
(``benchmarks/selection_study.py``) records the same figures per world and calibrates the rule
on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from rmdiag.audit import AuditResult
from rmdiag.rewards import BASELINES

FEATURES: dict[str, str] = {
    "rmse_gain_bias": "the ensemble's held-out RMSE gain over the bias baseline (bias RMSE - "
                      "ensemble RMSE)",
    "rmse_gain_min": "the ensemble's smallest held-out RMSE gain over any baseline",
    "pairwise_gain_item_mean": "the ensemble's within-user pairwise-accuracy gain over item_mean",
    "pairwise_gain_bias": "the ensemble's within-user pairwise-accuracy gain over bias",
    "unexplored_rmse_gain_bias": "the ensemble's RMSE gain over bias on the unexplored slice",
    "spread_error": "the rank correlation of the ensemble's member spread with its absolute "
                    "error (all held-out events)",
    "unexplored_share": "the share of test events whose item is rarely seen in training",
    "item_mean_pairwise": "item_mean's own within-user pairwise accuracy (how much of a user's "
                          "ordering item quality alone explains)",
    "ensemble_pairwise": "the ensemble's own within-user pairwise accuracy",
    "log_item_gini": "the Gini coefficient of the log's items' training-event counts",
    "log_rare_item_share": "the share of the log's items with fewer than 5 training events",
    "log_popularity_reward_corr": "the Spearman correlation over items of training-event count "
                                  "with mean logged reward",
    "greedy_gain": "the judge's gain of the pessimistic greedy slate (each user's top k by "
                   "ensemble mean - kappa * member spread) over SFT's, on the test users' "
                   "contexts",
    "greedy_gain_lcb": "that gain less the members' spread of it",
    "greedy_replay_gain": "the position-weighted mean observed reward of the held-out events "
                          "whose item the pessimistic greedy slate holds, minus the same of "
                          "SFT's slate (what users rated the items each slate would have shown "
                          "when the log happened to show them)",
    "greedy_residual_gap": "the same weighted mean of observed reward − ensemble prediction on "
                           "the greedy slate's held-out hits minus on SFT's (negative: the "
                           "ensemble over-rates its own top picks more than SFT's)",
    "greedy_gain_corrected": "greedy_gain + greedy_residual_gap: the ensemble's predicted gain "
                             "corrected by its held-out error on each slate's logged items",
}
# the judge's figures, then those that also read the held-out events' observed rewards
LOGGED = ("greedy_replay_gain", "greedy_residual_gap", "greedy_gain_corrected")
GREEDY = ("greedy_gain", "greedy_gain_lcb", *LOGGED)
MIN_HITS = 5  # held-out events a slate must hold for its logged-reward figures
GREEDY_KAPPA = 1.0  # pessimism of the greedy slate (PPO's middle κ; benchmarks/selection_study)


def _value(figure: Mapping[str, Any] | Any | None, sign: float = 1.0) -> float | None:
    if figure is None:
        return None
    value = figure.get("value") if isinstance(figure, Mapping) else getattr(figure, "value", None)
    if value is None or not math.isfinite(float(value)):
        return None
    return sign * float(value)


def audit_features(result: AuditResult | Any, test_unexplored_share: float | None
                   ) -> dict[str, float | None]:
    """The audit's figures as rule features; gains are signed so that larger means a better
    reward model. None: not measured (e.g. a slice too small) or not in `result` (`rmdiag
    select` reads only the ensemble's figures and comparisons from an audit.json)."""
    def comparison(slice_name: str, metric: str, baseline: str) -> Any:
        for entry in result.comparisons:
            if (entry["model"], entry["slice"], entry["metric"], entry["baseline"]) == (
                    "ensemble", slice_name, metric, baseline):
                return entry["difference"]
        return None

    rmse_gains = [_value(comparison("all", "rmse", b), -1.0) for b in BASELINES]
    item_mean = result.models.get("item_mean", {}).get("all", {})
    ensemble = result.models.get("ensemble", {}).get("all", {})
    return {
        "rmse_gain_bias": _value(comparison("all", "rmse", "bias"), -1.0),
        "rmse_gain_min": (min(g for g in rmse_gains if g is not None)
                          if all(g is not None for g in rmse_gains) else None),
        "pairwise_gain_item_mean": _value(comparison("all", "pairwise_accuracy", "item_mean")),
        "pairwise_gain_bias": _value(comparison("all", "pairwise_accuracy", "bias")),
        "unexplored_rmse_gain_bias": _value(comparison("unexplored", "rmse", "bias"), -1.0),
        "spread_error": _value((getattr(result, "spread_error", None) or {}).get("all")),
        "unexplored_share": (None if test_unexplored_share is None
                             else float(test_unexplored_share)),
        "item_mean_pairwise": _value(item_mean.get("pairwise_accuracy")),
        "ensemble_pairwise": _value(ensemble.get("pairwise_accuracy")),
    }


def log_features(items: np.ndarray, rewards: np.ndarray, n_items: int) -> dict[str, float | None]:
    """What the training log alone says about its exposure (no model involved): the Gini
    coefficient of the training-event counts of the log's items 1..n_items (0: every item as
    often, 1: one item only), the share of them with fewer than 5 training events, and the
    Spearman correlation over items with at least 5 events of an item's count with its mean
    logged reward (does the log's popularity already follow what users rate highly?)."""
    from scipy.stats import spearmanr

    counts = np.bincount(items, minlength=n_items + 1)[1:].astype(np.float64)
    sums = np.bincount(items, weights=rewards, minlength=n_items + 1)[1:]
    if n_items < 1 or counts.sum() == 0:
        return {"log_item_gini": None, "log_rare_item_share": None,
                "log_popularity_reward_corr": None}
    ordered = np.sort(counts)
    ranks = np.arange(1, n_items + 1)
    gini = float((2 * ranks - n_items - 1) @ ordered / (n_items * ordered.sum()))
    seen = counts >= 5
    corr = None
    if seen.sum() >= 3 and np.ptp(counts[seen]) > 0 and np.ptp(sums[seen] / counts[seen]) > 0:
        corr = float(spearmanr(counts[seen], sums[seen] / counts[seen]).statistic)
    return {"log_item_gini": gini, "log_rare_item_share": float((~seen).mean()),
            "log_popularity_reward_corr": corr}


class PessimisticGreedy:
    """A scorer over the catalog (the judge's `ScorerLike`): each item's ensemble mean − κ·spread
    (population std over members, as PPO's pessimism), column 0 (padding) lowest."""

    def __init__(self, ensemble: Any, n_items: int, kappa: float) -> None:
        self.ensemble, self.n_items, self.kappa = ensemble, n_items, kappa

    def __call__(self, context: Any) -> torch.Tensor:
        items = torch.arange(1, self.n_items + 1).repeat(len(context.users), 1)
        members = self.ensemble.members(context, items).double()
        score = members.mean(0) - self.kappa * members.std(0, unbiased=False)
        padding = torch.full((score.shape[0], 1), -torch.inf, dtype=score.dtype)
        return torch.cat([padding, score], dim=1)


def greedy_gain(judge: Any, ensemble: Any, sft_model: Any, context: Any, n_items: int,
                kappa: float = GREEDY_KAPPA) -> dict[str, float]:
    """The judge's value of the pessimistic greedy slate minus that of SFT's slate on `context`:
    `greedy_gain` (the mean over members of the members' differences) and `greedy_gain_lcb`
    (that mean − the members' population std of it). SFT imitates the log, so this is the
    ensemble's own predicted gain of a pessimistic policy over the logged behaviour."""
    greedy = judge.evaluate(PessimisticGreedy(ensemble, n_items, kappa), context)
    sft = judge.evaluate(sft_model, context)
    differences = np.asarray(greedy.members) - np.asarray(sft.members)
    return {"greedy_gain": float(differences.mean()),
            "greedy_gain_lcb": float(differences.mean() - kappa * differences.std())}


def logged_slate_evidence(ensemble: Any, sft_scores: Callable[[Any], torch.Tensor],
                          evalsets: Iterable[Any], n_items: int, kappa: float = GREEDY_KAPPA,
                          k: int = 10, gamma: float = 0.9) -> dict[str, float | None]:
    """What the held-out events' observed rewards say of the pessimistic greedy slate against
    SFT's, with no propensities: on each held-out event (`evalsets`: `rmdiag.policies.EvalSet`s,
    the audit's held-out events), both slates are the user's top k at that point (the
    history, but not the event's own item, excluded -- as the ranking metrics do), and an event
    is a slate's *hit* when its logged item is in the slate, weighted by its position's
    discount gamma**j (the judge's). `greedy_replay_gain`: the weighted mean observed reward of
    the greedy slate's hits minus SFT's (a replay estimate: unbiased only under uniformly random
    exposure, here a figure, not a value); `greedy_residual_gap`: the weighted mean of observed
    − predicted reward (ensemble mean) on the greedy slate's hits minus on SFT's -- the part of
    the ensemble's own gain that its held-out error on those items takes back. None when either
    slate has fewer than `MIN_HITS` hits. `sft_scores(context)`: SFT's catalog scores [B,
    n_items + 1] (`sft_scorer`)."""
    sums = {"greedy": np.zeros(3), "sft": np.zeros(3)}  # weight, weighted reward, residual
    discount = gamma ** np.arange(k, dtype=np.float64)
    hits = {"greedy": 0, "sft": 0}
    for evalset in evalsets:
        context = evalset.context
        if len(evalset) == 0:
            continue
        exclude = torch.from_numpy(np.where(evalset.exclude >= 0, evalset.exclude, 0)).long()
        greedy = PessimisticGreedy(ensemble, n_items, kappa)(context).scatter(1, exclude,
                                                                            -torch.inf)
        sft = sft_scores(context).double().scatter(1, exclude, -torch.inf)
        sft[:, 0] = -torch.inf  # the padding column
        targets = torch.from_numpy(np.asarray(evalset.targets)).long()[:, None]
        rewards = np.asarray(evalset.target_rewards, dtype=np.float64)
        predicted = ensemble(context, targets).double()[:, 0].numpy()
        for name, scores in (("greedy", greedy), ("sft", sft)):
            top = scores.topk(min(k, scores.shape[1] - 1), dim=1).indices
            row, position = (top == targets).nonzero(as_tuple=True)
            row, position = row.numpy(), position.numpy()
            weight = discount[position]
            hits[name] += len(row)
            sums[name] += [weight.sum(), weight @ rewards[row],
                           weight @ (rewards[row] - predicted[row])]
    if min(hits.values()) < MIN_HITS:
        return {"greedy_replay_gain": None, "greedy_residual_gap": None}
    mean = {name: total[1:] / total[0] for name, total in sums.items()}
    return {"greedy_replay_gain": float(mean["greedy"][0] - mean["sft"][0]),
            "greedy_residual_gap": float(mean["greedy"][1] - mean["sft"][1])}


def sft_scorer(model: Any) -> Callable[[Any], torch.Tensor]:
    """A trained policy's catalog scores in eval mode, history not excluded (`trainers.
    policy_scores`), for `logged_slate_evidence`."""
    from trainers import policy_scores

    return lambda context: policy_scores(model, context, exclude_history=False)


def combine_greedy(gain: Mapping[str, float], logged: Mapping[str, float | None] | None
                   ) -> dict[str, float | None]:
    """The `GREEDY` figures from `greedy_gain`'s and `logged_slate_evidence`'s (None: not
    computed, every `LOGGED` figure None); `greedy_gain_corrected` is their sum."""
    out: dict[str, float | None] = dict(gain) | dict.fromkeys(LOGGED)
    if logged is not None:
        out |= logged
        gap = logged["greedy_residual_gap"]
        out["greedy_gain_corrected"] = None if gap is None else gain["greedy_gain"] + gap
    return out


def greedy_features(judge: Any, ensemble: Any, sft_model: Any, context: Any, evalsets: Any,
                    n_items: int, kappa: float = GREEDY_KAPPA,
                    names: Iterable[str] = GREEDY) -> dict[str, float | None]:
    """The `GREEDY` figures: `greedy_gain` on `context` (the test users'), and -- only when
    `names` holds one of `LOGGED`, since they cost an ensemble pass over the held-out events --
    the logged-reward figures on `evalsets` (`logged_slate_evidence`, `combine_greedy`)."""
    gain = greedy_gain(judge, ensemble, sft_model, context, n_items, kappa)
    logged = (logged_slate_evidence(ensemble, sft_scorer(sft_model), evalsets, n_items, kappa)
              if set(names) & set(LOGGED) else None)
    return combine_greedy(gain, logged)


def selection_features(names: Iterable[str], result: AuditResult | None,
                       test_unexplored_share: float | None, train_items: np.ndarray,
                       train_rewards: np.ndarray, n_items: int,
                       greedy: Any | None = None) -> dict[str, float | None]:
    """The features in `names` (`FEATURES`), None where unavailable. `greedy`: a no-argument
    callable returning `greedy_gain`'s figures, called only when a greedy feature is named."""
    wanted = set(names)
    unknown = wanted - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown selection features {sorted(unknown)}; known: {list(FEATURES)}")
    out: dict[str, float | None] = {}
    if result is not None:
        out |= audit_features(result, test_unexplored_share)
    if wanted & {"log_item_gini", "log_rare_item_share", "log_popularity_reward_corr"}:
        out |= log_features(train_items, train_rewards, n_items)
    if wanted & set(GREEDY):
        out |= greedy() if greedy is not None and result is not None else dict.fromkeys(GREEDY)
    return {name: out.get(name) for name in sorted(wanted)}
