"""``AuditResult``: everything the audit measured, and its JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rmdiag.audit.config import AuditConfig
from rmdiag.audit.figures import Figure
from rmdiag.rewards import RewardEnsemble


@dataclass
class AuditResult:
    """Everything the audit measured. ``to_json()`` is ``audit.json`` (DESIGN.md, Output)
    without what ``rmdiag.select`` decides from it (``verdict``, ``reasons``): those are
    ``rmdiag.select.Judgement``'s, and ``rmdiag.report.audit_json`` joins the two."""

    models: dict[str, dict[str, dict[str, Figure]]]
    comparisons: list[dict[str, Any]]
    spread_error: dict[str, Figure]
    gap: dict[str, dict[str, Any]]
    slices: dict[str, dict[str, int]]
    # calibration[model][slice]: mean_error, ece, reliability (bins), and for binary rewards
    # log_loss, brier, auc (``rmdiag.audit.calibration``); shift: train_mean, heldout_mean,
    # heldout_minus_train (figures) and its p_value
    calibration: dict[str, dict[str, dict[str, Any]]]
    shift: dict[str, Any]
    config: AuditConfig
    data: dict[str, Any]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    # the best-of-n over-optimization curve (``rmdiag.overoptimization``), or ``{"reason"}``
    # when it is unavailable; set by the pipeline after the SFT policy is trained, so ``None``
    # (and absent from the JSON) when ``audit()`` is called alone
    overoptimization: dict[str, Any] | None = None
    # per held-out event, for the plots (not in the JSON)
    events: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # per member and held-out event, float64 [M, N], for "ensemble" and each external model
    # (e.g. to export as a predictions file; not in the JSON, not kept by ``--resume``)
    member_predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # the fitted reward-model ensemble (a RewardFn with members), for the stages after the audit
    # to optimize and judge with (not in the JSON)
    ensemble: RewardEnsemble | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
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
            "calibration": _figures_to_json(self.calibration),
            "shift": _figures_to_json(self.shift),
            "data": self.data,
            "config": dataclasses.asdict(self.config),
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        } | ({} if self.overoptimization is None else {"overoptimization": self.overoptimization})

    @classmethod
    def from_json(
        cls,
        payload: dict[str, Any],
        *,
        events: dict[str, np.ndarray] | None = None,
        predictions: dict[str, np.ndarray] | None = None,
        ensemble: RewardEnsemble | None = None,
    ) -> AuditResult:
        """The inverse of ``to_json()`` (every figure back as a ``Figure``), with the parts the
        JSON leaves out given back by the caller (``rmdiag run --resume`` keeps them beside it).
        ``seconds`` and ``timings`` come back rounded as ``to_json()`` wrote them."""

        def figure(value: dict[str, Any]) -> Figure:
            return Figure(value["value"], value["low"], value["high"], reason=value.get("reason"))

        return cls(
            models={
                name: {
                    slice_name: {metric: figure(fig) for metric, fig in metrics.items()}
                    for slice_name, metrics in slices.items()
                }
                for name, slices in payload["models"].items()
            },
            comparisons=[
                {**c, "difference": figure(c["difference"])} for c in payload["comparisons"]
            ],
            spread_error={k: figure(fig) for k, fig in payload["spread_error"].items()},
            gap={
                name: {k: figure(v) if isinstance(v, dict) else v for k, v in parts.items()}
                for name, parts in payload["gap"].items()
            },
            slices=payload["slices"],
            calibration=_figures_from_json(payload.get("calibration", {})),
            shift=_figures_from_json(payload.get("shift", {})),
            config=AuditConfig(**payload["config"]),
            data=payload["data"],
            seconds=float(payload["seconds"]),
            timings={k: float(v) for k, v in payload["timings"].items()},
            overoptimization=payload.get("overoptimization"),
            events=dict(events or {}),
            predictions=dict(predictions or {}),
            ensemble=ensemble,
        )


def _is_figure_json(value: Any) -> bool:
    return isinstance(value, dict) and {"value", "low", "high"} <= set(value)


def _figures_to_json(value: Any) -> Any:
    """Nested dicts and lists of Figures (and plain values) as JSON."""
    if isinstance(value, Figure):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _figures_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_figures_to_json(v) for v in value]
    return value


def _figures_from_json(value: Any) -> Any:
    """The inverse of ``_figures_to_json``."""
    if _is_figure_json(value):
        return Figure(value["value"], value["low"], value["high"], reason=value.get("reason"))
    if isinstance(value, dict):
        return {k: _figures_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_figures_from_json(v) for v in value]
    return value
