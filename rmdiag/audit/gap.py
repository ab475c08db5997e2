"""Each model's RMSE on training events against its held-out RMSE (memorization)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rmdiag.audit.config import AuditConfig
from rmdiag.audit.external import reward_fn_events
from rmdiag.audit.models import reward_model_predictions
from rmdiag.audit.statistics import paired_ratio_stats, ratio_figure
from rmdiag.data import Interactions
from rmdiag.rewards import RewardEnsemble
from rmdiag.rewards.base import RewardModel


def train_gap(
    train: Interactions,
    heldout: Interactions,
    baselines: Mapping[str, RewardModel],
    ensemble: RewardEnsemble,
    heldout_predictions: Mapping[str, np.ndarray],
    config: AuditConfig,
    *,
    external: Mapping[str, Callable[..., Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """RMSE on (a sample of) training events, each given its earlier training events, against
    held-out RMSE. The gap is held-out minus train (large gaps mean memorization); each RMSE is
    the square root of a ratio of per-user sums (squared errors over events), users resampled
    jointly over the union of both parts' users (a user absent from one part adds nothing to
    that part's sums)."""
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(train))
    if len(rows) > config.gap_events:
        rows = np.sort(rng.choice(rows, size=config.gap_events, replace=False))
    sample = train.take(rows)
    predictions = {name: model.predict_events(train, sample) for name, model in baselines.items()}
    predictions.update(reward_model_predictions(ensemble, ensemble.member_events(train, sample)))
    for name, fn in (external or {}).items():  # a RewardFn of the user's, scored as the rest
        predictions[name] = reward_fn_events(fn, train, sample).mean(0)
    union = np.union1d(sample.users, heldout.users)
    train_index = np.searchsorted(union, sample.users)
    heldout_index = np.searchsorted(union, heldout.users)

    def per_user(index: np.ndarray, squared: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(index, weights=squared, minlength=len(union)).astype(np.float64)

    train_events, heldout_events = per_user(train_index), per_user(heldout_index)

    stats = {
        "confidence": config.confidence,
        "n_resamples": config.n_resamples,
        "seed": config.seed,
    }
    out: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        train_squared = per_user(train_index, (pred - sample.rewards) ** 2)
        heldout_squared = per_user(
            heldout_index, (heldout_predictions[name] - heldout.rewards) ** 2
        )
        train_rmse = ratio_figure(train_squared, train_events, transform="sqrt", **stats)
        gap, p_value, _ = paired_ratio_stats(
            heldout_squared, train_squared, heldout_events, train_events, transform="sqrt",
            **stats
        )
        out[name] = {"train_rmse": train_rmse, "gap": gap, "p_value": p_value}
    return out
