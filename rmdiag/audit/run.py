"""``audit(train, heldout)``: fit the baselines and the ensemble, measure them all."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from rmdiag.audit.calibration import calibration, is_binary, shift
from rmdiag.audit.config import METRICS, SLICES, AuditConfig
from rmdiag.audit.external import DEFAULT_NAME, check_name, reward_fn_events
from rmdiag.audit.figures import Figure
from rmdiag.audit.gap import train_gap
from rmdiag.audit.inputs import InsufficientDataError, check_auditable
from rmdiag.audit.metrics import Slice, UserSums, per_user_metrics, spread_error_correlation
from rmdiag.audit.models import fit_models, reward_model_predictions
from rmdiag.audit.result import AuditResult
from rmdiag.audit.statistics import (
    coverage_warning,
    detectable_difference,
    holm,
    mean_figure,
    paired_ratio_stats,
    ratio_figure,
)
from rmdiag.data import Interactions
from rmdiag.rewards import BASELINES
from rmdiag.rewards.base import torch_threads
from rmdiag.split import unexplored_mask

HELDOUT_EXPOSURES: tuple[str, ...] = ("log", "random")


def audit(
    train: Interactions,
    heldout: Interactions,
    *,
    config: AuditConfig | None = None,
    history: Interactions | None = None,
    reward_model: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
    external_predictions: Mapping[str, np.ndarray] | None = None,
    heldout_exposure: str = "log",
) -> AuditResult:
    """Fit baselines and a reward-model ensemble on ``train``; measure them on ``heldout``.

    A reward model of your own is audited beside them, against the same baselines on the same
    held-out events (in ``models``, in ``comparisons`` and their Holm families, in spread-error
    when it has two members or more, and in the gap when it can score training events):
    ``reward_model`` is a ``RewardFn`` (``(context, items) -> [B, K]``, or an ensemble exposing
    ``.members``), named ``external``, or a mapping name -> ``RewardFn``; it is scored on each
    held-out event's context from ``history`` as the built-in models are.
    ``external_predictions`` maps a name to precomputed predictions of the held-out events,
    ``[N]`` or ``[M, N]`` for M members, in ``heldout``'s row order (``rmdiag.audit.external.
    read_predictions`` reads them from a file); their train gap is not measured (no
    predictions of training events). Names may not clash with the built-in models'.

    ``heldout_exposure``: ``"log"`` (default) when the held-out events come from the same
    logging policy as ``train`` (e.g. each user's last events), so the unexplored slice is the
    held-out events on rarely seen items; ``"random"`` declares them ratings under randomized
    exposure (``rmdiag audit --holdout FILE --holdout-kind random``): all of them are then the
    unexplored slice, the place a policy optimized against the model can go.

    ``history`` supplies each held-out event's context (its user's events in ``history``
    strictly before it); by default ``train``, so all of a user's held-out events are scored
    from one context, as a policy scores its candidates. (Were the later held-out event's
    context to include the earlier one's reward, history effects would enter the within-user
    comparison: after a high rating, the next event's prediction rises exactly when the earlier
    event is the likelier winner.) Raises ``InsufficientDataError`` for data that cannot
    support an audit.
    """
    config = config or AuditConfig()
    started = time.perf_counter()
    if heldout_exposure not in HELDOUT_EXPOSURES:
        raise ValueError(
            f"heldout_exposure must be one of {HELDOUT_EXPOSURES}, got {heldout_exposure!r}"
        )
    if reward_model is not None and not isinstance(reward_model, Mapping):
        reward_model = {DEFAULT_NAME: reward_model}
    external_fns = dict(reward_model or {})
    external = {}
    for name, values in (external_predictions or {}).items():
        values = np.asarray(values, dtype=np.float64)
        values = values[None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[1] != len(heldout) or len(values) == 0:
            raise ValueError(
                f"external predictions {name!r} must have shape [N] or [M, N] with N = "
                f"{len(heldout)} held-out events, not {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"external predictions {name!r} hold NaN or infinite values")
        external[name] = values
    for name in [*external_fns, *external]:
        check_name(name)
    if set(external_fns) & set(external):
        raise ValueError(f"names given twice: {sorted(set(external_fns) & set(external))}")
    check_auditable(train, heldout)
    n_heldout_users = len(np.unique(heldout.users))
    if n_heldout_users < config.min_users:
        raise InsufficientDataError(
            f"{n_heldout_users} users have held-out events; an audit needs at least "
            f"{config.min_users} (min_users) for its intervals",
            source=train.source,
        )
    # One thread: the models are small, and on a shared machine extra threads only contend.
    with torch_threads(1):
        return _audit(train, heldout, config, history, started, external_fns, external,
                      heldout_exposure)


def _audit(
    train: Interactions,
    heldout: Interactions,
    config: AuditConfig,
    history: Interactions | None,
    started: float,
    external_fns: Mapping[str, Callable[..., Any]] | None = None,
    external: Mapping[str, np.ndarray] | None = None,
    heldout_exposure: str = "log",
) -> AuditResult:
    torch.manual_seed(config.seed)
    history = history if history is not None else train

    timings: dict[str, float] = {}
    baselines, ensemble = fit_models(train, config)
    timings["fit"] = time.perf_counter() - started
    predictions = {
        name: model.predict_events(history, heldout) for name, model in baselines.items()
    }
    members = ensemble.member_events(history, heldout)
    rm_predictions = reward_model_predictions(ensemble, members)
    member_predictions = {"ensemble": members}
    for name, fn in (external_fns or {}).items():
        member_predictions[name] = reward_fn_events(fn, history, heldout)
    member_predictions.update(external or {})
    for name, values in member_predictions.items():
        if name != "ensemble":
            rm_predictions[name] = values.mean(0)
    predictions.update(rm_predictions)
    timings["predict"] = time.perf_counter() - started - timings["fit"]
    rewards = heldout.rewards.astype(np.float64)
    users = heldout.users
    if heldout_exposure == "random":
        unexplored = np.ones(len(heldout), dtype=bool)
    else:
        unexplored = unexplored_mask(train, heldout, config.min_count)
    pieces = {
        "all": Slice.build("all", np.arange(len(heldout)), users, rewards),
        "unexplored": Slice.build("unexplored", np.flatnonzero(unexplored), users, rewards),
    }

    # ---- metrics with intervals
    per_user: dict[str, dict[str, dict[str, UserSums | str]]] = {}
    models: dict[str, dict[str, dict[str, Figure]]] = {}
    seed = config.seed
    stats = {"confidence": config.confidence, "n_resamples": config.n_resamples}
    for name, pred in predictions.items():
        per_user[name], models[name] = {}, {}
        for slice_name, piece in pieces.items():
            values = per_user_metrics(pred, rewards, piece, config)
            per_user[name][slice_name] = values
            figures = {}
            for metric, source in (
                ("rmse", "mse"),
                ("mae", "mae"),
                ("pairwise_accuracy", "pairwise_accuracy"),
            ):
                value = values[source]
                if isinstance(value, str):
                    figures[metric] = Figure.unavailable(value)
                    continue
                figures[metric] = ratio_figure(
                    value.numerator,
                    value.denominator,
                    transform="sqrt" if metric == "rmse" else "identity",
                    seed=seed,
                    **stats,
                )
            models[name][slice_name] = figures

    # ---- calibration per model and slice, and the exposure shift
    binary = is_binary(np.r_[train.rewards, rewards])
    calibration_figures = {
        name: {
            slice_name: calibration(pred, rewards, piece, binary=binary,
                                    min_users=config.min_users, seed=seed, **stats)
            for slice_name, piece in pieces.items()
        }
        for name, pred in predictions.items()
    }
    exposure_shift = shift(train.users, train.rewards.astype(np.float64), users, rewards,
                           confidence=config.confidence, n_resamples=config.n_resamples,
                           seed=seed)

    # ---- paired comparisons, every reward model against every baseline
    comparisons: list[dict[str, Any]] = []
    tested: list[int] = []
    spreads: dict[int, tuple[int, float]] = {}  # (users, spread of the paired test), for power
    for name in rm_predictions:
        for baseline in BASELINES:
            for slice_name in SLICES:
                for metric, source in (
                    ("rmse", "mse"),
                    ("mae", "mae"),
                    ("pairwise_accuracy", "pairwise_accuracy"),
                ):
                    a = per_user[name][slice_name][source]
                    b = per_user[baseline][slice_name][source]
                    entry: dict[str, Any] = {
                        "model": name,
                        "baseline": baseline,
                        "slice": slice_name,
                        "metric": metric,
                    }
                    if isinstance(a, str) or isinstance(b, str):
                        entry.update(
                            difference=Figure.unavailable(a if isinstance(a, str) else b),
                            p_value=None,
                            p_adjusted=None,
                            detectable_difference=None,
                        )
                    else:
                        # the same events: one denominator, users resampled jointly
                        difference, p_value, comparison = paired_ratio_stats(
                            a.numerator,
                            b.numerator,
                            a.denominator,
                            transform="sqrt" if metric == "rmse" else "identity",
                            seed=seed,
                            **stats,
                        )
                        entry.update(difference=difference, p_value=p_value, p_adjusted=None)
                        spreads[len(comparisons)] = (comparison.n, comparison.spread)
                        tested.append(len(comparisons))
                    comparisons.append(entry)
    # Holm within each family: one (slice, metric) question, every reward model x baseline.
    for slice_name in SLICES:
        for metric in METRICS:
            family = [
                i
                for i in tested
                if comparisons[i]["slice"] == slice_name and comparisons[i]["metric"] == metric
            ]
            adjusted = holm([comparisons[i]["p_value"] for i in family])
            for index, value in zip(family, adjusted, strict=True):
                comparisons[index]["p_adjusted"] = value
            # the smallest |difference| this family could have detected (Holm's strictest step)
            family_alpha = (1 - config.confidence) / max(len(family), 1)
            for index in family:
                comparisons[index]["detectable_difference"] = detectable_difference(
                    *spreads[index], alpha=family_alpha, power=config.power
                )

    # ---- does ensemble spread track error?
    spread = members.std(0)
    abs_error = np.abs(rm_predictions["ensemble"] - rewards)
    spread_error = {
        slice_name: spread_error_correlation(spread, abs_error, piece, config)
        for slice_name, piece in pieces.items()
    }
    all_users = pieces["all"].user_index
    spread_error["mean_spread"] = mean_figure(
        np.bincount(all_users, weights=spread) / np.bincount(all_users),
        seed=seed,
        **stats,
    )
    # an external ensemble's own: keys "<name>.all", "<name>.unexplored", "<name>.mean_spread"
    for name, values in member_predictions.items():
        if name == "ensemble" or len(values) < 2:
            continue
        own_spread = values.std(0)
        own_error = np.abs(rm_predictions[name] - rewards)
        for slice_name, piece in pieces.items():
            spread_error[f"{name}.{slice_name}"] = spread_error_correlation(
                own_spread, own_error, piece, config
            )
        spread_error[f"{name}.mean_spread"] = mean_figure(
            np.bincount(all_users, weights=own_spread) / np.bincount(all_users),
            seed=seed,
            **stats,
        )

    # ---- train versus held-out gap
    mark = time.perf_counter()
    gap = train_gap(train, heldout, baselines, ensemble, predictions, config,
                    external=external_fns or {})
    for name in external or {}:
        reason = "predictions given for held-out events only: no training events to compare"
        gap[name] = {
            "train_rmse": Figure.unavailable(reason),
            "gap": Figure.unavailable(reason),
            "p_value": None,
            "reason": reason,
        }
    timings["gap"] = time.perf_counter() - mark
    timings["statistics"] = mark - started - timings["fit"] - timings["predict"]

    popularity = np.bincount(train.items, minlength=train.n_items + 1)[heldout.items]
    return AuditResult(
        ensemble=ensemble,
        models=models,
        comparisons=comparisons,
        spread_error=spread_error,
        gap=gap,
        slices={
            name: {
                "events": len(piece.rows),
                "users": piece.n_users,
                "pairs": len(piece.pair_sign),
                "pair_users": piece.n_pair_users,
                "coverage_warning": coverage_warning(piece.n_users, f"The '{name}' slice"),
            }
            for name, piece in pieces.items()
        },
        calibration=calibration_figures,
        shift=exposure_shift,
        config=config,
        data={
            "source": train.source,
            "heldout_exposure": heldout_exposure,
            "binary_rewards": binary,
            "train_events": len(train),
            # the scale of the documented default temperatures (`rmdiag select`)
            "train_reward_std": float(train.rewards.std()) if len(train) else 1.0,
            "heldout_events": len(heldout),
            "users": int(len(np.unique(np.r_[train.users, heldout.users]))),
            "items": int(len(np.unique(np.r_[train.items, heldout.items]))),
            "ensemble_members": list(ensemble.member_kinds),
            "external_models": {
                name: {"members": len(values)}
                for name, values in member_predictions.items()
                if name != "ensemble"
            },
            "baseline_settings": {
                "user_mean_shrinkage": baselines["user_mean"].shrinkage_,
                "item_mean_shrinkage": baselines["item_mean"].shrinkage_,
                "bias_regularization": [baselines["bias"].user_reg_, baselines["bias"].item_reg_],
            },
        },
        seconds=time.perf_counter() - started,
        timings=timings,
        events={
            "user": users,
            "item": heldout.items,
            "reward": rewards,
            "unexplored": unexplored,
            "popularity": popularity,
            "spread": spread,
        },
        predictions=predictions,
        member_predictions=member_predictions,
    )
