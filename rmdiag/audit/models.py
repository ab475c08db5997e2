"""Fitting the audited models: the four baselines and the reward-model ensemble."""

from __future__ import annotations

import numpy as np

from rmdiag.audit.config import AuditConfig
from rmdiag.data import Interactions
from rmdiag.rewards import BASELINES, REWARD_MODELS, RewardEnsemble, last_event_split
from rmdiag.rewards.base import RewardModel
from rmdiag.rewards.lightgbm_model import import_dask


def fit_models(
    train: Interactions, config: AuditConfig
) -> tuple[dict[str, RewardModel], RewardEnsemble]:
    if config.lightgbm_dask:
        import_dask()  # a missing rmdiag[dask] extra is named before any model is fitted
    fit_part, tune_part = last_event_split(train)
    if len(fit_part) == 0 or len(np.unique(fit_part.items)) < 2:
        fit_part, tune_part = train, None  # too little data to spare a tuning event per user
    elif len(tune_part) == 0:
        tune_part = None
    baselines = {name: REWARD_MODELS[name]() for name in BASELINES}
    for model in baselines.values():
        model.fit(fit_part, tune_part)
    params = {
        "lightgbm": {
            "n_rounds": config.lightgbm_rounds,
            "n_threads": 1,
            "dask_scheduler": config.lightgbm_dask,
        },
        "sequence": {"epochs": config.sequence_epochs, "dim": config.sequence_dim,
                     "device": config.sequence_device},
    }
    ensemble = RewardEnsemble(
        kinds=config.kind_list,
        n_members=config.n_members,
        bootstrap=config.bootstrap,
        seed=config.seed,
        params=params,
        n_jobs=config.threads,
    )
    ensemble.fit(fit_part, tune_part)
    return baselines, ensemble


def reward_model_predictions(
    ensemble: RewardEnsemble, members: np.ndarray
) -> dict[str, np.ndarray]:
    """Each trained kind (mean of its members) and the whole ensemble."""
    kinds = np.array(ensemble.member_kinds)
    out = {kind: members[kinds == kind].mean(0) for kind in dict.fromkeys(ensemble.member_kinds)}
    out["ensemble"] = members.mean(0)
    return out
