"""The reward-model audit: how far can we trust a reward model? (DESIGN.md, Selection)

``audit(train, heldout, config=...)`` fits the four baselines and an ensemble of reward models on
``train`` and measures every one of them on the held-out events, on two slices:

- ``all``: every held-out event;
- ``unexplored``: held-out events whose item was seen fewer than ``min_count`` times in training
  (``rmdiag.split.unexplored_mask``), where a reward model has to generalize.

Metrics (each with an interval resampled over users, so users -- not events -- are the unit):

- ``rmse`` and ``mae`` of the predicted reward;
- ``pairwise_accuracy``: over pairs of one user's held-out events whose rewards differ, the share
  the model orders correctly; a tie in the prediction counts half (so a model that predicts one
  value per user, like ``user_mean``, scores exactly 0.5).

Then: paired differences of every reward model (each kind and ``ensemble``) against every
baseline, users resampled jointly, two-sided p-values Holm-adjusted within each family (one
family per slice and metric: every reward model against every baseline); the
rank correlation of the ensemble's member spread with its absolute error (does disagreement
track error?); each model's train-versus-held-out RMSE gap; and the verdict (``verdict_from``).

Per-user values. Every figure is the mean over users of a per-user value, which is what lets one
interval routine (users resampled) serve all of them: for user u with n_u events in a slice of N
events and U users, ``mse_u = U / N * sum of u's squared errors`` (so the mean over users is the
event-level MSE; RMSE's interval is the square root of MSE's), likewise MAE and, over users with
at least one usable pair, pairwise accuracy with the user's pair count in place of n_u. RMSE
differences use the linearization ``rmse + (mse_u - mse) / (2 rmse)`` per user: its mean is the
RMSE exactly and its spread is the delta-method one.

Statistics come from ``evaluators.intervals`` through three small functions
(``_mean_interval``, ``_paired_stats``, ``_adjust_pvalues``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.stats
import torch

from evaluators.intervals import adjust_pvalues, mean_interval, paired_difference
from rmdiag.data import DataError, Interactions, encode, load, read_table
from rmdiag.rewards import BASELINES, REWARD_MODELS, RewardEnsemble, last_event_split
from rmdiag.rewards.base import RewardModel
from rmdiag.split import DEFAULT_MIN_COUNT, leave_last_out, unexplored_mask

# Percentile bootstrap: RMSE's interval is the square root of MSE's, which a percentile interval
# carries exactly (quantiles commute with monotone maps).
INTERVAL_METHOD = "percentile"
SLICES: tuple[str, ...] = ("all", "unexplored")
METRICS: tuple[str, ...] = ("rmse", "mae", "pairwise_accuracy")
VERDICTS: tuple[str, ...] = ("generalizes", "directional", "unreliable")


class InsufficientDataError(DataError):
    """The data cannot support an audit (nothing held out, one item, constant rewards...).

    A ``rmdiag.data.DataError`` (so a ``ValueError``): the CLI maps it to exit code 2.
    """


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class AuditConfig:
    """Every knob of the audit; each field becomes a flag of ``rmdiag audit``.

    Defaults: 5 members (Netflix's ensemble size order; enough for a spread), 95% intervals,
    2,000 bootstrap resamples (percentile intervals are stable to about 0.01 at that size),
    alpha 0.05 after Holm. The verdict thresholds are documented in ``verdict_from``.
    """

    kinds: str = field(
        default="lightgbm,sequence",
        metadata=_help("comma-separated reward model kinds in the ensemble (lightgbm, sequence)"),
    )
    n_members: int = field(
        default=5, metadata=_help("ensemble members; member m is of kind m mod len(kinds)")
    )
    bootstrap: bool = field(
        default=True, metadata=_help("fit each member on a bootstrap resample of users")
    )
    min_count: int = field(
        default=DEFAULT_MIN_COUNT,
        metadata=_help("a held-out event is unexplored when its item has fewer training events"),
    )
    confidence: float = field(default=0.95, metadata=_help("confidence level of every interval"))
    n_resamples: int = field(
        default=2000, metadata=_help("bootstrap resamples of users for every interval")
    )
    alpha: float = field(
        default=0.05, metadata=_help("significance level for Holm-adjusted p-values (verdict)")
    )
    min_rmse_gain: float = field(
        default=0.0,
        metadata=_help("verdict: RMSE must be lower than every baseline's by more than this"),
    )
    min_pairwise_gain: float = field(
        default=0.0,
        metadata=_help("verdict: a pairwise-accuracy gain counts only when larger than this"),
    )
    directional_baselines: str = field(
        default="user_mean,item_mean",
        metadata=_help("verdict: `directional` needs the model to beat each of these baselines"),
    )
    require_unexplored: bool = field(
        default=False,
        metadata=_help(
            "verdict: `generalizes` needs the unexplored slice to be measurable (else a "
            "too-small slice is reported but does not block the verdict)"
        ),
    )
    min_users: int = field(
        default=20, metadata=_help("fewest users a slice needs for a figure (else null)")
    )
    min_pairs: int = field(
        default=20, metadata=_help("fewest usable within-user pairs for pairwise accuracy")
    )
    gap_events: int = field(
        default=5000, metadata=_help("training events sampled for the train/held-out gap")
    )
    lightgbm_rounds: int = field(default=200, metadata=_help("LightGBM boosting rounds (max)"))
    sequence_epochs: int = field(
        default=20, metadata=_help("sequence reward model epochs (max; early stopping)")
    )
    sequence_dim: int = field(default=32, metadata=_help("sequence reward model hidden size"))
    threads: int = field(
        default=2,
        metadata=_help(
            "worker processes fitting ensemble members, one thread each (1: fit in this "
            "process; above 1, a calling script needs the usual `if __name__ == '__main__'` "
            "guard of multiprocessing)"
        ),
    )
    seed: int = field(default=0, metadata=_help("random seed (models, folds, bootstrap)"))

    def __post_init__(self) -> None:
        problems = []
        unknown = [k for k in self.kind_list if k not in REWARD_MODELS or k in BASELINES]
        if not self.kind_list or unknown:
            problems.append(
                f"kinds must name trained reward models (lightgbm, sequence), got {self.kinds!r}"
            )
        if not set(self.directional_baseline_list) <= set(BASELINES):
            problems.append(
                f"directional_baselines must name baselines {BASELINES}, "
                f"got {self.directional_baselines!r}"
            )
        if self.n_members < 1:
            problems.append(f"n_members must be >= 1, got {self.n_members}")
        if not 0.5 <= self.confidence < 1:
            problems.append(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if self.n_resamples < 100:
            problems.append(f"n_resamples must be >= 100, got {self.n_resamples}")
        if self.min_users < 2 or self.min_pairs < 1 or self.min_count < 1:
            problems.append("min_users must be >= 2, min_pairs and min_count >= 1")
        if problems:
            raise ValueError("invalid AuditConfig: " + "; ".join(problems))

    @property
    def directional_baseline_list(self) -> list[str]:
        return [b.strip() for b in self.directional_baselines.split(",") if b.strip()]

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]


# -------------------------------------------------------------------------------------------
# Figures and the statistics behind them (swap point for evaluators.intervals)


@dataclass(frozen=True)
class Figure:
    """A point estimate with its interval; ``value is None`` (with ``reason``) when unavailable."""

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> Figure:
        return cls(None, None, None, reason)

    @property
    def available(self) -> bool:
        return self.value is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "low": self.low, "high": self.high}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def text(self, digits: int = 3) -> str:
        if self.value is None:
            return f"n/a ({self.reason})"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _finite_figure(value: float, low: float, high: float) -> Figure:
    if not all(np.isfinite([value, low, high])):
        return Figure.unavailable("the interval could not be computed (degenerate resamples)")
    return Figure(float(value), float(min(low, value)), float(max(high, value)))


def _mean_interval(values: np.ndarray, *, confidence: float, n_resamples: int, seed: int) -> Figure:
    """Mean of per-user values with a bootstrap interval, users resampled
    (``evaluators.intervals.mean_interval``, the project's one interval routine)."""
    figure = mean_interval(values, INTERVAL_METHOD, confidence, n_resamples, seed)
    return _finite_figure(figure.value, figure.low, figure.high)


def _paired_stats(
    a: np.ndarray, b: np.ndarray, *, confidence: float, n_resamples: int, seed: int
) -> tuple[Figure, float]:
    """Mean of the per-user differences a - b (users resampled jointly) and the two-sided
    p-value of a paired t-test across users (``evaluators.intervals.paired_difference``)."""
    comparison = paired_difference(a, b, INTERVAL_METHOD, confidence, n_resamples, seed)
    difference = comparison.difference
    return _finite_figure(difference.value, difference.low, difference.high), comparison.p_t


def _adjust_pvalues(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over one family of tests."""
    return [float(p) for p in adjust_pvalues(list(p_values), "holm")]


def _user_resamples(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """Indices [n_resamples, n_users] of users drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_users, size=(n_resamples, n_users))


# -------------------------------------------------------------------------------------------
# Per-user values of the metrics


def within_user_pairs(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, of rows that share a user; ``users`` must be grouped."""
    n = len(users)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    partners = np.repeat(ends, ends - starts) - np.arange(n) - 1  # rows after i in its group
    first = np.repeat(np.arange(n), partners)
    offsets = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners)
    return first, first + 1 + offsets


@dataclass(frozen=True)
class _Slice:
    """Held-out rows of one slice, with user indices and usable pairs precomputed."""

    name: str
    rows: np.ndarray  # indices into the held-out events
    user_index: np.ndarray  # per row: 0..n_users-1
    n_users: int
    pair_first: np.ndarray  # indices into rows
    pair_second: np.ndarray
    pair_sign: np.ndarray  # sign of the reward difference (nonzero)
    pair_user: np.ndarray  # user index of each pair
    n_pair_users: int

    @classmethod
    def build(cls, name: str, rows: np.ndarray, users: np.ndarray, rewards: np.ndarray) -> _Slice:
        slice_users = users[rows]
        _, user_index = np.unique(slice_users, return_inverse=True)
        first, second = within_user_pairs(slice_users)
        sign = np.sign(rewards[rows][first] - rewards[rows][second])
        usable = sign != 0
        first, second, sign = first[usable], second[usable], sign[usable]
        pair_user = user_index[first]
        return cls(
            name,
            rows,
            user_index,
            int(user_index.max() + 1) if len(rows) else 0,
            first,
            second,
            sign,
            pair_user,
            len(np.unique(pair_user)),
        )


def _per_user_metrics(
    pred: np.ndarray, rewards: np.ndarray, piece: _Slice, config: AuditConfig
) -> dict[str, np.ndarray | str]:
    """Per-user values (see module docstring) of each metric, or the reason it is unavailable."""
    out: dict[str, np.ndarray | str] = {}
    if piece.n_users < config.min_users:
        reason = (
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
        return {"mse": reason, "mae": reason, "pairwise_accuracy": reason}
    error = pred[piece.rows] - rewards[piece.rows]
    scale = piece.n_users / len(piece.rows)
    out["mse"] = np.bincount(piece.user_index, weights=error**2, minlength=piece.n_users) * scale
    out["mae"] = (
        np.bincount(piece.user_index, weights=np.abs(error), minlength=piece.n_users) * scale
    )
    n_pairs = len(piece.pair_sign)
    if n_pairs < config.min_pairs or piece.n_pair_users < config.min_users:
        out["pairwise_accuracy"] = (
            f"{n_pairs} within-user pairs with different rewards from {piece.n_pair_users} users "
            f"in the '{piece.name}' slice; at least {config.min_pairs} pairs and "
            f"{config.min_users} users needed"
        )
        return out
    slice_pred = pred[piece.rows]
    agreement = (
        np.sign(slice_pred[piece.pair_first] - slice_pred[piece.pair_second]) * piece.pair_sign
    )
    correct = np.where(agreement > 0, 1.0, np.where(agreement == 0, 0.5, 0.0))
    pair_users, compact = np.unique(piece.pair_user, return_inverse=True)
    per_user = np.bincount(compact, weights=correct, minlength=len(pair_users))
    out["pairwise_accuracy"] = per_user * len(pair_users) / n_pairs
    out["_pair_users"] = pair_users
    return out


def _rmse_linearized(mse_values: np.ndarray) -> np.ndarray:
    """Per-user values whose mean is the RMSE and whose spread is the delta-method one."""
    mse = float(mse_values.mean())
    rmse = float(np.sqrt(mse))
    return rmse + (mse_values - mse) / (2.0 * max(rmse, 1e-12))


# -------------------------------------------------------------------------------------------
# The result


@dataclass
class AuditResult:
    """Everything the audit measured; ``to_json()`` is ``audit.json`` (DESIGN.md, Output)."""

    models: dict[str, dict[str, dict[str, Figure]]]
    comparisons: list[dict[str, Any]]
    spread_error: dict[str, Figure]
    gap: dict[str, dict[str, Any]]
    verdict: str
    reasons: list[str]
    slices: dict[str, dict[str, int]]
    config: AuditConfig
    data: dict[str, Any]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    # per held-out event, for the plots (not in the JSON)
    events: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "confidence": self.config.confidence,
            "models": {
                name: {
                    slice_name: {metric: fig.as_dict() for metric, fig in metrics.items()}
                    for slice_name, metrics in slices.items()
                }
                for name, slices in self.models.items()
            },
            "comparisons": [
                {**c, "difference": c["difference"].as_dict()} for c in self.comparisons
            ],
            "spread_error": {k: fig.as_dict() for k, fig in self.spread_error.items()},
            "gap": {
                name: {k: v.as_dict() if isinstance(v, Figure) else v for k, v in parts.items()}
                for name, parts in self.gap.items()
            },
            "slices": self.slices,
            "data": self.data,
            "config": dataclasses.asdict(self.config),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


# -------------------------------------------------------------------------------------------
# Inputs


def check_auditable(train: Interactions, heldout: Interactions) -> None:
    """Refuse data that cannot support an audit, with a message that says why."""
    source = train.source
    if len(heldout) == 0:
        raise InsufficientDataError(
            "no held-out events: every user has too few events to hold any out (leave-last-out "
            "needs users with at least 3 events), or the holdout file is empty",
            source=source,
        )
    if len(train) == 0:
        raise InsufficientDataError("no training events", source=source)
    n_train_items = len(np.unique(train.items))
    if n_train_items < 2:
        raise InsufficientDataError(
            f"the training events cover {n_train_items} item; an audit needs at least 2",
            source=source,
        )
    if np.ptp(train.rewards) == 0:
        raise InsufficientDataError(
            f"every training reward equals {train.rewards[0]:g}: there is nothing to predict",
            source=source,
        )
    if np.ptp(heldout.rewards) == 0:
        raise InsufficientDataError(
            f"every held-out reward equals {heldout.rewards[0]:g}: errors and orderings cannot "
            "tell models apart",
            source=source,
        )


def audit_inputs(
    data: str | os.PathLike[str] | pa.Table | Any,
    holdout: str | os.PathLike[str] | pa.Table | Any | None = None,
    columns: Mapping[str, str] | None = None,
) -> tuple[Interactions, Interactions]:
    """(train, held-out) for an audit; ``data`` is a path, a table or an ``Interactions``.

    Without ``holdout``: leave-last-out on ``data``; the held-out events are every user's last
    two events (the split's valid and test), the rest trains. With ``holdout`` (for example
    ratings collected under randomized exposure): all of ``data`` trains and the holdout's
    events are held out; both are encoded together so ids agree.
    """
    if holdout is None:
        log = data if isinstance(data, Interactions) else load(data, columns)
        split = leave_last_out(log)
        train, heldout = split.train, split.valid.concat(split.test)
    else:
        raw, name = read_table(data, columns)
        raw_holdout, holdout_name = read_table(holdout, columns)
        canonical = ["user_id", "item_id", "timestamp", "reward"]
        raw, raw_holdout = raw.select(canonical), raw_holdout.select(canonical)
        if raw.schema != raw_holdout.schema:  # e.g. integer ids in one file, strings in the other
            raw = raw.cast(
                pa.schema(
                    [
                        (c, pa.string()) if c.endswith("_id") else raw.schema.field(c)
                        for c in canonical
                    ]
                )
            )
            raw_holdout = raw_holdout.cast(raw.schema)
        log = encode(pa.concat_tables([raw, raw_holdout]), source=f"{name} + {holdout_name}")
        is_holdout = log.column("row") >= raw.num_rows
        train, heldout = log.take(~is_holdout), log.take(is_holdout)
    check_auditable(train, heldout)
    return train, heldout


# -------------------------------------------------------------------------------------------
# The audit


def _fit_models(
    train: Interactions, config: AuditConfig
) -> tuple[dict[str, RewardModel], RewardEnsemble]:
    fit_part, tune_part = last_event_split(train)
    if len(fit_part) == 0 or len(np.unique(fit_part.items)) < 2:
        fit_part, tune_part = train, None  # too little data to spare a tuning event per user
    elif len(tune_part) == 0:
        tune_part = None
    baselines = {name: REWARD_MODELS[name]() for name in BASELINES}
    for model in baselines.values():
        model.fit(fit_part, tune_part)
    params = {
        "lightgbm": {"n_rounds": config.lightgbm_rounds, "n_threads": 1},
        "sequence": {"epochs": config.sequence_epochs, "dim": config.sequence_dim},
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


def _rm_predictions(ensemble: RewardEnsemble, members: np.ndarray) -> dict[str, np.ndarray]:
    """Each trained kind (mean of its members) and the whole ensemble."""
    kinds = np.array(ensemble.member_kinds)
    out = {kind: members[kinds == kind].mean(0) for kind in dict.fromkeys(ensemble.member_kinds)}
    out["ensemble"] = members.mean(0)
    return out


def audit(
    train: Interactions,
    heldout: Interactions,
    *,
    config: AuditConfig | None = None,
    history: Interactions | None = None,
) -> AuditResult:
    """Fit baselines and a reward-model ensemble on ``train``; measure them on ``heldout``.

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
    check_auditable(train, heldout)
    n_heldout_users = len(np.unique(heldout.users))
    if n_heldout_users < config.min_users:
        raise InsufficientDataError(
            f"{n_heldout_users} users have held-out events; an audit needs at least "
            f"{config.min_users} (min_users) for its intervals",
            source=train.source,
        )
    # One thread: the models are small, and on a shared machine extra threads only contend.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _audit(train, heldout, config, history, started)
    finally:
        torch.set_num_threads(previous_threads)


def _audit(
    train: Interactions,
    heldout: Interactions,
    config: AuditConfig,
    history: Interactions | None,
    started: float,
) -> AuditResult:
    torch.manual_seed(config.seed)
    history = history if history is not None else train

    timings: dict[str, float] = {}
    baselines, ensemble = _fit_models(train, config)
    timings["fit"] = time.perf_counter() - started
    predictions = {
        name: model.predict_events(history, heldout) for name, model in baselines.items()
    }
    members = ensemble.member_events(history, heldout)
    rm_predictions = _rm_predictions(ensemble, members)
    predictions.update(rm_predictions)
    timings["predict"] = time.perf_counter() - started - timings["fit"]
    rewards = heldout.rewards.astype(np.float64)
    users = heldout.users
    unexplored = unexplored_mask(train, heldout, config.min_count)
    pieces = {
        "all": _Slice.build("all", np.arange(len(heldout)), users, rewards),
        "unexplored": _Slice.build("unexplored", np.flatnonzero(unexplored), users, rewards),
    }

    # ---- metrics with intervals
    per_user: dict[str, dict[str, dict[str, np.ndarray | str]]] = {}
    models: dict[str, dict[str, dict[str, Figure]]] = {}
    seed = config.seed
    stats = {"confidence": config.confidence, "n_resamples": config.n_resamples}
    for name, pred in predictions.items():
        per_user[name], models[name] = {}, {}
        for slice_name, piece in pieces.items():
            values = _per_user_metrics(pred, rewards, piece, config)
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
                fig = _mean_interval(value, seed=seed, **stats)
                if metric == "rmse" and fig.available:
                    fig = Figure(
                        *(float(np.sqrt(max(v, 0.0))) for v in (fig.value, fig.low, fig.high))
                    )
                figures[metric] = fig
            models[name][slice_name] = figures

    # ---- paired comparisons, every reward model against every baseline
    comparisons: list[dict[str, Any]] = []
    tested: list[int] = []
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
                        )
                    else:
                        if metric == "rmse":
                            a, b = _rmse_linearized(a), _rmse_linearized(b)
                        difference, p_value = _paired_stats(a, b, seed=seed, **stats)
                        entry.update(difference=difference, p_value=p_value, p_adjusted=None)
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
            adjusted = _adjust_pvalues([comparisons[i]["p_value"] for i in family])
            for index, value in zip(family, adjusted, strict=True):
                comparisons[index]["p_adjusted"] = value

    # ---- does ensemble spread track error?
    spread = members.std(0)
    abs_error = np.abs(rm_predictions["ensemble"] - rewards)
    spread_error = {
        slice_name: _spread_error_correlation(spread, abs_error, piece, config)
        for slice_name, piece in pieces.items()
    }
    all_users = pieces["all"].user_index
    spread_error["mean_spread"] = _mean_interval(
        np.bincount(all_users, weights=spread) / np.bincount(all_users),
        seed=seed,
        **stats,
    )

    # ---- train versus held-out gap
    mark = time.perf_counter()
    gap = _train_gap(train, heldout, baselines, ensemble, predictions, config)
    timings["gap"] = time.perf_counter() - mark
    timings["statistics"] = mark - started - timings["fit"] - timings["predict"]

    verdict, reasons = verdict_from(models, comparisons, config)
    popularity = np.bincount(train.items, minlength=train.n_items + 1)[heldout.items]
    return AuditResult(
        models=models,
        comparisons=comparisons,
        spread_error=spread_error,
        gap=gap,
        verdict=verdict,
        reasons=reasons,
        slices={
            name: {
                "events": len(piece.rows),
                "users": piece.n_users,
                "pairs": len(piece.pair_sign),
                "pair_users": piece.n_pair_users,
            }
            for name, piece in pieces.items()
        },
        config=config,
        data={
            "source": train.source,
            "train_events": len(train),
            "heldout_events": len(heldout),
            "users": int(len(np.unique(np.r_[train.users, heldout.users]))),
            "items": int(len(np.unique(np.r_[train.items, heldout.items]))),
            "ensemble_members": list(ensemble.member_kinds),
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
    )


def _spread_error_correlation(
    spread: np.ndarray, abs_error: np.ndarray, piece: _Slice, config: AuditConfig
) -> Figure:
    """Spearman correlation of member spread with absolute error, interval over users."""
    if piece.n_users < config.min_users:
        return Figure.unavailable(
            f"{piece.n_users} users in the '{piece.name}' slice; at least {config.min_users} needed"
        )
    x, y = spread[piece.rows], abs_error[piece.rows]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Figure.unavailable("spread or error is constant: the rank correlation is undefined")
    value = float(scipy.stats.spearmanr(x, y).statistic)
    # resample users: each draw takes all events of the drawn users
    order = np.argsort(piece.user_index, kind="stable")
    counts = np.bincount(piece.user_index, minlength=piece.n_users)
    starts = np.cumsum(counts) - counts
    draws = _user_resamples(piece.n_users, min(config.n_resamples, 1000), config.seed)
    estimates = []
    for drawn in draws:
        lengths = counts[drawn]
        rows = order[
            np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
            + np.arange(lengths.sum())
        ]
        if np.ptp(x[rows]) > 0 and np.ptp(y[rows]) > 0:
            estimates.append(scipy.stats.spearmanr(x[rows], y[rows]).statistic)
    if len(estimates) < 10:
        return Figure.unavailable("too few non-degenerate resamples for an interval")
    tail = (1 - config.confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return _finite_figure(value, low, high)


def _train_gap(
    train: Interactions,
    heldout: Interactions,
    baselines: Mapping[str, RewardModel],
    ensemble: RewardEnsemble,
    heldout_predictions: Mapping[str, np.ndarray],
    config: AuditConfig,
) -> dict[str, dict[str, Any]]:
    """RMSE on (a sample of) training events, each given its earlier training events, against
    held-out RMSE. The gap is held-out minus train (large gaps mean memorization); users are
    resampled jointly over the union of both parts' users (a user absent from one part adds
    nothing to that part's sum)."""
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(train))
    if len(rows) > config.gap_events:
        rows = np.sort(rng.choice(rows, size=config.gap_events, replace=False))
    sample = train.take(rows)
    predictions = {name: model.predict_events(train, sample) for name, model in baselines.items()}
    predictions.update(_rm_predictions(ensemble, ensemble.member_events(train, sample)))
    union = np.union1d(sample.users, heldout.users)
    train_index = np.searchsorted(union, sample.users)
    heldout_index = np.searchsorted(union, heldout.users)

    def per_user_mse(index: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=squared, minlength=len(union)) * len(union) / len(index)

    stats = {
        "confidence": config.confidence,
        "n_resamples": config.n_resamples,
        "seed": config.seed,
    }
    out: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        train_mse = per_user_mse(train_index, (pred - sample.rewards) ** 2)
        heldout_mse = per_user_mse(
            heldout_index, (heldout_predictions[name] - heldout.rewards) ** 2
        )
        fig = _mean_interval(train_mse, **stats)
        train_rmse = Figure(*(float(np.sqrt(max(v, 0.0))) for v in (fig.value, fig.low, fig.high)))
        gap, p_value = _paired_stats(
            _rmse_linearized(heldout_mse), _rmse_linearized(train_mse), **stats
        )
        out[name] = {"train_rmse": train_rmse, "gap": gap, "p_value": p_value}
    return out


# -------------------------------------------------------------------------------------------
# The verdict


def _find(comparisons: Sequence[Mapping[str, Any]], **match: str) -> Mapping[str, Any]:
    for entry in comparisons:
        if all(entry[k] == v for k, v in match.items()):
            return entry
    raise KeyError(match)


def _comparison_text(entry: Mapping[str, Any]) -> str:
    if entry["p_adjusted"] is None:
        return f"{entry['metric']} vs {entry['baseline']}: {entry['difference'].text()}"
    return (
        f"{entry['metric']} difference vs {entry['baseline']} {entry['difference'].text()}, "
        f"Holm-adjusted p = {entry['p_adjusted']:.3g}"
    )


def verdict_from(
    models: Mapping[str, Mapping[str, Mapping[str, Figure]]],
    comparisons: Sequence[Mapping[str, Any]],
    config: AuditConfig,
    model: str = "ensemble",
) -> tuple[str, list[str]]:
    """The verdict on ``model`` (the ensemble) and the sentences that justify it.

    Rule (thresholds are ``AuditConfig`` fields; "significant" = Holm-adjusted p < ``alpha``):

    1. ``generalizes`` when, on the ``all`` slice, its RMSE is significantly lower than every
       baseline's by more than ``min_rmse_gain`` and no baseline orders a user's events
       significantly better (pairwise accuracy) -- a policy optimized against the model follows
       its ordering of candidates, not its level -- and on the ``unexplored`` slice no baseline
       has a significantly lower RMSE (the slice is small by construction, so this asks for
       no loss there rather than a significant gain). When the unexplored slice is too small
       to measure, the verdict notes it and (unless ``require_unexplored``) rests on ``all``.
    2. ``directional`` when not (1) but it orders a user's held-out events better than chance
       (pairwise accuracy significantly above ``user_mean``'s, which is exactly 0.5, by more
       than ``min_pairwise_gain``) and it beats each of ``directional_baselines`` (default
       ``user_mean`` and ``item_mean``: "who" and "what" alone) significantly, on RMSE or on
       pairwise accuracy. It knows more than either mean, but not more than their sum
       (``bias``) or not where the log rarely looked.
    3. ``unreliable`` otherwise: it does not beat even the user's or the item's mean reward.

    This rule is a hypothesis until the simulation study calibrates it (DESIGN.md, Selection).
    """
    reasons: list[str] = []
    name_figs = models[model]["all"]
    reasons.append(
        f"{model}: held-out RMSE {name_figs['rmse'].text()}, pairwise accuracy "
        f"{name_figs['pairwise_accuracy'].text()} (intervals at {config.confidence:.0%}, users "
        "resampled)."
    )

    def significant(entry: Mapping[str, Any], better: float) -> bool:
        diff = entry["difference"]
        return (
            entry["p_adjusted"] is not None
            and entry["p_adjusted"] < config.alpha
            and diff.value is not None
            and np.sign(diff.value) * 1.0 == np.sign(better) * 1.0
            and abs(diff.value) > 0
        )

    rmse_all = {
        b: _find(comparisons, model=model, baseline=b, slice="all", metric="rmse")
        for b in BASELINES
    }
    beats_rmse = {
        b: significant(e, -1.0) and e["difference"].value < -config.min_rmse_gain
        for b, e in rmse_all.items()
    }
    unexplored_rmse = {
        b: _find(comparisons, model=model, baseline=b, slice="unexplored", metric="rmse")
        for b in BASELINES
    }
    unexplored_measured = all(e["p_adjusted"] is not None for e in unexplored_rmse.values())
    unexplored_ok = unexplored_measured and not any(
        significant(e, 1.0) for e in unexplored_rmse.values()
    )
    pairwise_all = {
        b: _find(comparisons, model=model, baseline=b, slice="all", metric="pairwise_accuracy")
        for b in BASELINES
    }
    orders_worse = [b for b, e in pairwise_all.items() if significant(e, -1.0)]
    if all(beats_rmse.values()):
        reasons.append(
            "On all held-out events its RMSE is significantly lower than every baseline's: "
            + "; ".join(_comparison_text(e) for e in rmse_all.values())
            + "."
        )
        if orders_worse:
            reasons.append(
                f"But {', '.join(orders_worse)} order a user's held-out events significantly "
                "better than it does, and a policy optimized against it follows its ordering: "
                + "; ".join(_comparison_text(pairwise_all[b]) for b in orders_worse)
                + "."
            )
        elif unexplored_ok:
            reasons.append(
                "On the unexplored slice no baseline does significantly better: "
                + "; ".join(_comparison_text(e) for e in unexplored_rmse.values())
                + "."
            )
            return "generalizes", reasons
        elif not unexplored_measured and not config.require_unexplored:
            reasons.append(
                "The unexplored slice is too small to measure ("
                + str(next(iter(unexplored_rmse.values()))["difference"].reason)
                + "); the verdict rests on all held-out events."
            )
            return "generalizes", reasons
        else:
            reasons.append(
                "But on the unexplored slice a baseline does significantly better: "
                + "; ".join(_comparison_text(e) for e in unexplored_rmse.values())
                + "."
            )
    else:
        failing = [b for b, ok in beats_rmse.items() if not ok]
        reasons.append(
            f"Its RMSE is not significantly lower than that of {', '.join(failing)}: "
            + "; ".join(_comparison_text(rmse_all[b]) for b in failing)
            + "."
        )
    # directional: beats each of the named baselines on error or on ordering, and orders a
    # user's events better than chance
    chance = _find(
        comparisons, model=model, baseline="user_mean", slice="all", metric="pairwise_accuracy"
    )
    above_chance = (
        significant(chance, 1.0) and chance["difference"].value > config.min_pairwise_gain
    )
    evidence: dict[str, Mapping[str, Any] | None] = {}
    for baseline in config.directional_baseline_list:
        rmse_entry = rmse_all[baseline]
        pair_entry = _find(
            comparisons, model=model, baseline=baseline, slice="all", metric="pairwise_accuracy"
        )
        if beats_rmse[baseline]:
            evidence[baseline] = rmse_entry
        elif (
            significant(pair_entry, 1.0)
            and pair_entry["difference"].value > config.min_pairwise_gain
        ):
            evidence[baseline] = pair_entry
        else:
            evidence[baseline] = None
    if above_chance and all(e is not None for e in evidence.values()):
        reasons.append(
            "It orders a user's held-out events better than chance (a per-user constant such "
            f"as user_mean scores 0.5): {_comparison_text(chance)}; and it beats "
            + ", ".join(evidence)
            + ": "
            + "; ".join(_comparison_text(e) for e in evidence.values() if e is not None)
            + ". Its signal is directional but not trustworthy enough to optimize against."
        )
        return "directional", reasons
    if not above_chance:
        reasons.append(
            f"It does not order a user's events significantly better than chance: "
            f"{_comparison_text(chance)}."
        )
    missing = [b for b, e in evidence.items() if e is None]
    if missing:
        reasons.append(
            f"It beats neither the error nor the ordering of {', '.join(missing)}: "
            + "; ".join(
                _comparison_text(rmse_all[b])
                + "; "
                + _comparison_text(
                    _find(
                        comparisons,
                        model=model,
                        baseline=b,
                        slice="all",
                        metric="pairwise_accuracy",
                    )
                )
                for b in missing
            )
            + "."
        )
    return "unreliable", reasons


# -------------------------------------------------------------------------------------------
# Writing


def audit_files(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    holdout: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    config: AuditConfig | None = None,
) -> AuditResult:
    """``rmdiag audit --data FILE [--holdout FILE] --out DIR`` as a function: read, audit, write.

    Raises ``rmdiag.data.DataError`` (``InsufficientDataError`` included) before writing
    anything when the input is bad or cannot support an audit.
    """
    train, heldout = audit_inputs(data, holdout, columns)
    result = audit(train, heldout, config=config)
    write_audit(result, out_dir)
    return result


def write_audit(result: AuditResult, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write audit.json and audit.html into ``out_dir``, each atomically (temp + rename).

    Both are rendered in memory first, so a failure writes nothing.
    """
    from rmdiag.outputs import publish

    return publish(out_dir, audit_files_content(result))


def audit_files_content(result: AuditResult) -> dict[str, str]:
    """audit.json and audit.html rendered in memory (for callers that publish more files)."""
    from rmdiag.audit_report import render_html
    from rmdiag.outputs import to_json

    return {"audit.json": to_json(result.to_json()), "audit.html": render_html(result)}
