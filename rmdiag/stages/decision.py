"""``rmdiag select``: the decision from an audit.json alone (DESIGN.md, Selection).

`read_audit` rebuilds what `rmdiag.select.verdict_from` reads -- the ensemble's own figures
(``models.ensemble.<slice>.<metric>``) and its comparisons with every baseline -- from the JSON
`rmdiag audit` writes, refusing a file that lacks any of them (DataError naming the file and the
key). `select_decision` then decides as `rmdiag run` does and sets the documented default
temperature (`rmdiag.policies.default_temperature`, scaled by the audit's training-reward
spread, ``data.train_reward_std``): no validation sweep runs here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rmdiag import policies
from rmdiag.audit import SLICES, Figure
from rmdiag.data import DataError
from rmdiag.outputs import publish, to_json
from rmdiag.rewards import BASELINES
from rmdiag.select import (
    LEVEL,
    ORDERING,
    Decision,
    SelectConfig,
    decide,
    default_temperature,
    rule_features,
    verdict_from,
)
from rmdiag.selection_features import audit_features
from rmdiag.stages.inputs import read_json, require

MODEL = "ensemble"
NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


@dataclasses.dataclass(frozen=True)
class AuditFigures:
    """What the selection reads from audit.json."""

    models: dict[str, dict[str, dict[str, Figure]]]
    comparisons: list[dict[str, Any]]
    confidence: float
    train_reward_std: float
    select_config: dict[str, Any]
    shift: Figure | None = None  # shift.heldout_minus_train (absent in older audit.json)
    overoptimization: dict[str, Any] | None = None  # the best-of-n curve, when it has figures


def _figure(payload: Any, key: str, source: str) -> Figure:
    figure = require(payload, key, dict, source)
    values = [require(figure, part, OPTIONAL_NUMBER, source) if part in figure else None
              for part in ("value", "low", "high")]
    for part in ("value", "low", "high"):
        if part not in figure:
            raise DataError(f"missing key '{key}.{part}'", source=source)
    if values[0] is not None and (values[1] is None or values[2] is None):
        raise DataError(f"key '{key}' has a value but no interval", source=source)
    reason = figure.get("reason")
    return Figure(*(None if v is None else float(v) for v in values),
                  reason=reason if isinstance(reason, str) else None)


def read_audit(path: str | os.PathLike[str]) -> AuditFigures:
    """The figures `rmdiag.select` needs from an audit.json (module docstring)."""
    source = str(path)
    payload = read_json(path)
    models: dict[str, dict[str, dict[str, Figure]]] = {MODEL: {}}
    for slice_name in SLICES:
        models[MODEL][slice_name] = {
            metric: _figure(payload, f"models.{MODEL}.{slice_name}.{metric}", source)
            for metric in (LEVEL, ORDERING)
        }
    entries = require(payload, "comparisons", list, source)
    comparisons = []
    wanted = {(MODEL, b, s, m) for b in BASELINES for s in SLICES for m in (LEVEL, ORDERING)}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"comparisons[{index}] is not an object", source=source)
        key = tuple(entry.get(k) for k in ("model", "baseline", "slice", "metric"))
        if key not in wanted:
            continue  # another model's comparisons: not read by the selection
        where = f"comparisons[{index}]"
        comparisons.append({
            "model": key[0], "baseline": key[1], "slice": key[2], "metric": key[3],
            "difference": _figure(entry, "difference", f"{source}, {where}"),
            "p_value": require(entry, "p_value", OPTIONAL_NUMBER, f"{source}, {where}"),
            "p_adjusted": require(entry, "p_adjusted", OPTIONAL_NUMBER, f"{source}, {where}"),
        })
        wanted.discard(key)
    if wanted:
        model, baseline, slice_name, metric = sorted(wanted)[0]
        raise DataError(
            f"missing key 'comparisons': no entry for model {model!r}, baseline {baseline!r}, "
            f"slice {slice_name!r}, metric {metric!r}", source=source)
    select_config = payload.get("select_config", {})
    if not isinstance(select_config, dict):
        raise DataError("key 'select_config' is not an object", source=source)
    shift = (_figure(payload, "shift.heldout_minus_train", source)
             if isinstance(payload.get("shift"), dict) else None)
    return AuditFigures(
        models, comparisons, float(require(payload, "confidence", NUMBER, source)),
        float(require(payload, "data.train_reward_std", NUMBER, source)), select_config,
        shift=shift, overoptimization=_curve(payload, source),
    )


def _curve(payload: dict[str, Any], source: str) -> dict[str, Any] | None:
    """audit.json's ``overoptimization`` as the guard reads it, or None when the file has no
    curve (older files, ``--no-overoptimization``, predictions files: no evidence either way)."""
    curve = payload.get("overoptimization")
    if not isinstance(curve, dict) or "gold_peak_n" not in curve:
        return None
    key = "overoptimization"
    ns = require(payload, f"{key}.n", list, source)
    require(payload, f"{key}.gold_peak_n", int, source)
    require(payload, f"{key}.gold_kind", str, source)
    for series in ("proxy", "gold"):
        figures = require(payload, f"{key}.{series}", list, source)
        if len(figures) != len(ns):
            raise DataError(f"key '{key}.{series}' has {len(figures)} figures for {len(ns)} "
                            "values of n", source=source)
        for index, figure in enumerate(figures):
            _figure({"f": figure}, "f", f"{source}, {key}.{series}[{index}]")
    for name in ("proxy_gold_gap", "divergence"):
        _figure(payload, f"{key}.{name}", source)
    require(payload, f"{key}.divergence.p_value", NUMBER, source)
    return curve


def select_config_from(audit: AuditFigures, source: str,
                       overrides: dict[str, Any] | None = None) -> SelectConfig:
    """The thresholds the audit used (its ``select_config``), with `overrides` on top."""
    names = {f.name for f in dataclasses.fields(SelectConfig)}
    settings = {k: v for k, v in audit.select_config.items() if k in names}
    try:
        return SelectConfig(**(settings | dict(overrides or {})))
    except (TypeError, ValueError) as error:
        raise DataError(f"key 'select_config': {error}", source=source) from error


def select_decision(path: str | os.PathLike[str],
                    overrides: dict[str, Any] | None = None) -> Decision:
    """The decision on an audit.json's ensemble at the documented default temperature."""
    audit = read_audit(path)
    config = select_config_from(audit, str(path), overrides)
    judgement = verdict_from(audit.models, audit.comparisons, config, model=MODEL,
                             confidence=audit.confidence, shift=audit.shift,
                             overoptimization=audit.overoptimization)
    # audit.json holds the audit's figures but not the log or an SFT policy: a rule that reads
    # the log's or the greedy gain's figures finds them unavailable here (its reasons say so)
    features = audit_features(audit, None)
    decision = decide(judgement, config, {name: features.get(name)
                                          for name in rule_features(config)})
    beyond = [name for name in rule_features(config) if name not in features]
    if beyond:
        decision = dataclasses.replace(decision, reasons=(
            *decision.reasons,
            f"An audit.json alone does not hold {', '.join(beyond)} (the training log's and the "
            "SFT policy's figures), so the rule's branches that read them were not taken; "
            "`rmdiag run` computes them and may choose otherwise.",
        ))
    temperature = policies.default_temperature(decision.algorithm, audit.train_reward_std)
    decision = default_temperature(decision, temperature)
    if temperature:
        parameter, _, scaled = policies.TEMPERATURES[decision.algorithm]
        scale = (f" times the audit's training-reward std {audit.train_reward_std:.3g}"
                 if scaled else "")
        decision = dataclasses.replace(decision, reasons=(
            *decision.reasons,
            f"rmdiag select runs no validation sweep: {parameter} is the middle of "
            f"rmdiag.policies.TEMPERATURES[{decision.algorithm!r}]{scale}; `rmdiag run` (without "
            "--no-sweep) chooses it on the validation events instead.",
        ))
    return decision


def select_files(audit: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 overrides: dict[str, Any] | None = None) -> Decision:
    """``rmdiag select``: write ``decision.json`` into `out_dir` (nothing on failure)."""
    decision = select_decision(audit, overrides)
    payload = decision.to_json() | {"temperature_source": "default", "audit": str(audit)}
    publish(out_dir, {"decision.json": to_json(payload)})
    return decision
