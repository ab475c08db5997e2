"""Selection: what the audit's figures say about the reward model (DESIGN.md, Selection).

The audit (``rmdiag.audit``) measures; this module decides. ``judge(result, config)`` reads an
``AuditResult``'s figures and returns a ``Judgement``: the verdict (one of ``VERDICTS``), the
sentences that justify it (citing the figures) and the evidence (those figures, as JSON figures
with their Holm-adjusted p-values). ``verdict_from`` is the rule itself, on the figures alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rmdiag.audit import AuditResult, Figure
from rmdiag.rewards import BASELINES

VERDICTS: tuple[str, ...] = ("generalizes", "directional", "unreliable")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SelectConfig:
    """The verdict's thresholds; each field becomes a flag (``rmdiag audit --alpha``,
    ``rmdiag run --select-alpha``). "Significant" means Holm-adjusted p < ``alpha``."""

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

    def __post_init__(self) -> None:
        problems = []
        if not set(self.directional_baseline_list) <= set(BASELINES):
            problems.append(
                f"directional_baselines must name baselines {BASELINES}, "
                f"got {self.directional_baselines!r}"
            )
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if problems:
            raise ValueError("invalid SelectConfig: " + "; ".join(problems))

    @property
    def directional_baseline_list(self) -> list[str]:
        return [b.strip() for b in self.directional_baselines.split(",") if b.strip()]


@dataclass(frozen=True)
class Judgement:
    """What ``judge`` decided: the verdict, its reasons (sentences citing the audit's figures),
    the evidence (name -> JSON figure ``{"value", "low", "high"}``, with ``p_adjusted`` for a
    comparison) and the thresholds used."""

    verdict: str
    reasons: tuple[str, ...]
    evidence: dict[str, dict[str, Any]]
    config: SelectConfig

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "evidence": self.evidence}


def judge(
    result: AuditResult, config: SelectConfig | None = None, *, model: str = "ensemble"
) -> Judgement:
    """The verdict on ``model`` (default: the ensemble) from an audit's figures."""
    return verdict_from(
        result.models,
        result.comparisons,
        config,
        model=model,
        confidence=result.config.confidence,
    )


def _evidence(
    models: Mapping[str, Mapping[str, Mapping[str, Figure]]],
    consulted: Sequence[Mapping[str, Any]],
    model: str,
) -> dict[str, dict[str, Any]]:
    """The figures a verdict rests on: the model's own on ``all``, then every comparison the
    rule read, named ``<slice>.<metric>.<model>-<baseline>`` (difference = model - baseline)."""
    evidence = {
        f"all.{metric}.{model}": models[model]["all"][metric].as_dict()
        for metric in ("rmse", "pairwise_accuracy")
    }
    for entry in consulted:
        name = f"{entry['slice']}.{entry['metric']}.{entry['model']}-{entry['baseline']}"
        evidence[name] = entry["difference"].as_dict() | {"p_adjusted": entry["p_adjusted"]}
    return evidence


def find_comparison(comparisons: Sequence[Mapping[str, Any]], **match: str) -> Mapping[str, Any]:
    """The comparison entry whose keys (model, baseline, slice, metric) match."""
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
    config: SelectConfig | None = None,
    *,
    model: str = "ensemble",
    confidence: float = 0.95,
) -> Judgement:
    """The verdict on ``model`` (the ensemble) and the sentences that justify it.

    Rule (thresholds are ``SelectConfig`` fields; "significant" = Holm-adjusted p < ``alpha``):

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
    config = config or SelectConfig()
    reasons: list[str] = []
    consulted: list[Mapping[str, Any]] = []

    def done(verdict: str) -> Judgement:
        return Judgement(verdict, tuple(reasons), _evidence(models, consulted, model), config)

    name_figs = models[model]["all"]
    reasons.append(
        f"{model}: held-out RMSE {name_figs['rmse'].text()}, pairwise accuracy "
        f"{name_figs['pairwise_accuracy'].text()} (intervals at {confidence:.0%}, users "
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

    def _find(comparisons: Sequence[Mapping[str, Any]], **match: str) -> Mapping[str, Any]:
        entry = find_comparison(comparisons, **match)
        consulted.append(entry)
        return entry

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
            return done("generalizes")
        elif not unexplored_measured and not config.require_unexplored:
            reasons.append(
                "The unexplored slice is too small to measure ("
                + str(next(iter(unexplored_rmse.values()))["difference"].reason)
                + "); the verdict rests on all held-out events."
            )
            return done("generalizes")
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
        return done("directional")
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
    return done("unreliable")
