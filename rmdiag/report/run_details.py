"""report.html's details: collapsible sections, one table or block each, of the audit, the sweep,
the policies' paired differences, high-reward targets, training, the evaluation setup, examples,
the decision's evidence and the run's configuration."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rmdiag.report.curve import curve_note, curve_table
from rmdiag.report.html import (
    CALIBRATION_KEYS,
    detectable_cell,
    escape,
    figure_cell,
    finite,
    is_figure,
    json_attr,
    p_cell,
    plain,
    table,
)
from rmdiag.report.run_summary import metric_label, parameter_label, sweep_keys, temperature

# Blocks of summary.json that the page shows in their own places (the rest go to "Run
# configuration" as they are).
_HANDLED = {"data", "split", "sequences", "audit", "config", "audit_config", "simulation",
            "decision", "sweep", "policies", "evaluation", "conclusion", "examples"}
# Keys of the audit that its sections show (the rest go to "Audit diagnostics" as they are).
_AUDIT_SHOWN = {"verdict", "reasons", "confidence", "models", "comparisons", "spread_error",
                "gap", "slices", "data", "config", "seconds", "calibration", "shift",
                "overoptimization"}


def _collapsible(title: str, body: str, opened: bool = False) -> str:
    """A <details> section; ``title`` and ``body`` are HTML."""
    return f"<details{' open' if opened else ''}><summary>{title}</summary>{body}</details>"


def _json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return f"<pre>{escape(text)}</pre>"


# ---- the audit --------------------------------------------------------------------------------


def _audit_summary(audit: Mapping) -> str:
    """The audit's verdict and reasons, its ensemble members and how long it took (open)."""
    verdict = audit.get("verdict")
    head = "Reward-model audit" + (f": verdict <em>{escape(verdict)}</em>" if verdict else "")
    body = []
    reasons = audit.get("reasons") or []
    if reasons:
        body.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in reasons) + "</ul>")
    data = audit.get("data") or {}
    if data.get("ensemble_members"):
        members = ", ".join(str(m) for m in data["ensemble_members"])
        body.append(f"<p>Ensemble members: {escape(members)}.</p>")
    for info in (audit.get("slices") or {}).values():
        if isinstance(info, Mapping) and isinstance(info.get("coverage_warning"), str):
            body.append(f"<p class='note warning'>⚠ {escape(info['coverage_warning'])}.</p>")
    if finite(audit.get("seconds")):
        body.append(f"<p class='note'>The audit took {audit['seconds']:.1f} s.</p>")
    return _collapsible(head, "".join(body), opened=True)


def _comparisons_table(comparisons: Sequence[Mapping], alpha: float) -> str:
    names = ("model", "baseline", "slice", "metric")
    header = [*names, "difference<br><small>model − baseline</small>", "p", "p (Holm)",
              "detectable"]
    rows = []
    for c in comparisons:
        p_adj = c.get("p_adjusted")
        significant = finite(p_adj) and p_adj < alpha
        attrs = "".join(f' data-{k}="{escape(c.get(k))}"' for k in names)
        cls = ' class="sig"' if significant else ""
        rows.append(
            f"<tr{attrs}{cls} data-significant=\"{str(significant).lower()}\">"
            + "".join(f"<td class='name'>{escape(c.get(k))}</td>" for k in names)
            + figure_cell(c.get("difference"), "difference", signed=True, inline=True)
            + p_cell(c.get("p_value"), "p_value")
            + p_cell(p_adj, "p_adjusted", alpha)
            + detectable_cell(c.get("detectable_difference"))
            + "</tr>"
        )
    return table("comparisons", header, rows)


def _calibration(audit: Mapping) -> str:
    """The exposure shift, then each model's calibration figures per slice."""
    parts = []
    shift = (audit.get("shift") or {}).get("heldout_minus_train")
    if is_figure(shift):
        cell = figure_cell(shift, "heldout_minus_train", signed=True, inline=True)
        parts.append("<p>Exposure shift, held-out minus training mean reward:</p>"
                     + table("shift", ["held-out − train"], [f"<tr>{cell}</tr>"]))
    calibration = audit.get("calibration")
    if isinstance(calibration, Mapping) and calibration:
        slices = list(dict.fromkeys(s for per in calibration.values() for s in per))
        keys = [k for k in CALIBRATION_KEYS
                if any(k in by for per in calibration.values() for by in per.values())]
        rows = []
        for slice_name in slices:
            rows.append(f'<tr class="group"><th colspan="{len(keys) + 1}">slice '
                        f"{escape(slice_name)}</th></tr>")
            for model, per in calibration.items():
                by = per.get(slice_name) or {}
                rows.append(f'<tr data-model="{escape(model)}" data-slice="{escape(slice_name)}">'
                            f"<td class='name'>{escape(model)}</td>"
                            + "".join(figure_cell(by.get(k), k, signed=k == "mean_error",
                                                  inline=True) for k in keys)
                            + "</tr>")
        parts.append(table("calibration", ["model", *keys], rows)
                     + "<p class='note'>mean_error: mean prediction − reward (positive = too "
                     "high); ece: event-weighted mean |mean prediction − mean observed| over "
                     "quantile bins of each model's predictions. The reliability curves are in "
                     "audit.html.</p>")
    return "<h4>Calibration</h4>" + "".join(parts) if parts else ""


def _models_table(audit: Mapping) -> str:
    """Every model's figures, a group of rows per slice (headed by the slice's size)."""
    models = {m: per for m, per in (audit.get("models") or {}).items() if isinstance(per, Mapping)}
    slices = list(dict.fromkeys(s for per in models.values() for s in per))
    metrics = list(dict.fromkeys(
        m for per in models.values() for by in per.values() if isinstance(by, Mapping) for m in by
    ))
    info = audit.get("slices") or {}
    rows = []
    for slice_name in slices:
        size = info.get(slice_name) if isinstance(info.get(slice_name), Mapping) else {}
        size_text = ", ".join(f"{plain(v)} {escape(k)}" for k, v in size.items())
        rows.append(
            f'<tr class="group"><th colspan="{len(metrics) + 1}">slice {escape(slice_name)}'
            f"{': ' + size_text if size_text else ''}</th></tr>"
        )
        for model, per in models.items():
            by = per.get(slice_name)
            if not isinstance(by, Mapping):
                continue
            rows.append(
                f'<tr data-model="{escape(model)}" data-slice="{escape(slice_name)}">'
                f"<td class='name'>{escape(model)}</td>"
                + "".join(figure_cell(by.get(m), m, inline=True) for m in metrics)
                + "</tr>"
            )
    header = ["model"] + [escape(metric_label(m)) for m in metrics]
    return table("models", header, rows)


def _spread_error(spread: Mapping) -> str:
    keys = list(spread)
    row = "<tr>" + "".join(figure_cell(spread[k], k, inline=True) for k in keys) + "</tr>"
    return (
        "<h4>Does ensemble spread track error?</h4>"
        + table("spread-error", [escape(k) for k in keys], [row])
        + "<p class='note'>Rank correlation of member spread with the ensemble's absolute "
        "error per slice; mean_spread is the average member standard deviation.</p>"
    )


def _gap_table(gap: Mapping) -> str:
    rows = [
        f'<tr data-model="{escape(model)}"><td class="name">{escape(model)}</td>'
        + figure_cell(g.get("train_rmse"), "train_rmse", inline=True)
        + figure_cell(g.get("gap"), "gap", signed=True, inline=True)
        + p_cell(g.get("p_value"), "p_value")
        + "</tr>"
        for model, g in gap.items()
        if isinstance(g, Mapping)
    ]
    return "<h4>Generalization gap</h4>" + table(
        "gap", ["model", "train RMSE", "held-out − train RMSE", "p"], rows
    )


def _diagnostics(audit: Mapping) -> str:
    """Spread against error, the generalization gap, and whatever else the audit holds."""
    parts = []
    spread = audit.get("spread_error")
    if isinstance(spread, Mapping) and spread:
        parts.append(_spread_error(spread))
    gap = audit.get("gap")
    if isinstance(gap, Mapping) and gap:
        parts.append(_gap_table(gap))
    parts.append(_calibration(audit))
    for key, value in audit.items():
        if key not in _AUDIT_SHOWN:
            parts.append(f"<h4>{escape(key)}</h4>{_json_block(value)}")
    return "".join(parts)


def _audit_details(audit: Mapping, alpha: float) -> str:
    parts = [_audit_summary(audit)]
    comparisons = audit.get("comparisons") or []
    if comparisons:
        parts.append(_collapsible(
            f"All comparisons against baselines ({len(comparisons)})",
            "<p class='note'>Difference = model − baseline (negative is better for RMSE/MAE, "
            "positive for pairwise accuracy); p from a paired test across users, Holm-adjusted "
            f"over all comparisons; bold: adjusted p &lt; {alpha:g}.</p>"
            + _comparisons_table(comparisons, alpha),
        ))
    if audit.get("models"):
        parts.append(_collapsible("Reward models and baselines per slice", _models_table(audit)))
    curve = audit.get("overoptimization")
    if isinstance(curve, Mapping):
        parts.append(_collapsible("Over-optimization curve (best-of-n)",
                                  f"<p class='note'>{curve_note(curve)}</p>"
                                  + curve_table(curve, alpha)))
    diagnostics = _diagnostics(audit)
    if diagnostics:
        parts.append(_collapsible("Audit diagnostics", diagnostics))
    return "".join(parts)


# ---- the sweep --------------------------------------------------------------------------------


def _sweep_row(algorithm: str, parameter: str, point: Mapping, best: Any,
               keys: Sequence[str]) -> str:
    value = point.get("value")
    is_best = finite(best) and value == best
    cls = ' class="best"' if is_best else ""
    mark = " ★" if is_best else ""
    return (
        f'<tr data-algorithm="{escape(algorithm)}" data-parameter="{escape(parameter)}" '
        f'data-point="{json_attr(value)}" data-best="{str(is_best).lower()}"{cls}>'
        f"<td class='name'>{escape(algorithm)}</td>"
        f"<td class='name'>{escape(parameter_label(parameter))}</td>"
        f"<td>{plain(value)}{mark}</td>"
        + "".join(figure_cell(point.get(k), k, inline=True) for k in keys)
        + "</tr>"
    )


def _sweep_note(algorithm: str, info: Mapping) -> str:
    return (
        f"{escape(algorithm)}: {escape(parameter_label(str(info.get('parameter', ''))))} "
        f"selected by {escape(metric_label(str(info.get('metric', ''))))} on the "
        f"{escape(info.get('split', ''))} split, best {plain(info.get('best'))}"
    )


def _sweep_table(sweep: Mapping[str, Mapping]) -> str:
    """A row per swept value, every algorithm's; the best value marked."""
    swept = {a: info for a, info in sweep.items() if isinstance(info, Mapping)}
    per_algorithm = [sweep_keys(info.get("points") or [], info.get("metric"))
                     for info in swept.values()]
    keys = list(dict.fromkeys(k for keys in per_algorithm for k in keys))
    rows = [
        _sweep_row(algorithm, str(info.get("parameter", "")), point, info.get("best"), keys)
        for algorithm, info in swept.items()
        for point in info.get("points") or []
    ]
    header = ["algorithm", "parameter", "value"] + [escape(metric_label(k)) for k in keys]
    notes = [_sweep_note(algorithm, info) for algorithm, info in swept.items()]
    return table("sweep", header, rows) + (
        f"<p class='note'>{'; '.join(notes)}. ★ marks the best value.</p>" if notes else ""
    )


# ---- the policies -----------------------------------------------------------------------------


def _vs_sft_table(
    policies: Mapping, order: Sequence[str], metrics: Sequence[str], alpha: float
) -> str:
    """Every paired difference from the reference, the known metrics first ("" if none)."""
    rows = []
    for name in order:
        vs = policies[name].get("vs_sft")
        if not isinstance(vs, Mapping):
            continue
        keys = [m for m in metrics if m in vs] + [m for m in vs if m not in metrics]
        for metric in keys:
            c = vs[metric]
            if not isinstance(c, Mapping):
                continue
            rows.append(
                f'<tr data-policy="{escape(name)}" data-metric="{escape(metric)}">'
                f"<td class='name'>{escape(name)}</td>"
                f"<td class='name'>{escape(metric_label(metric))}</td>"
                + figure_cell(c.get("difference"), "difference", signed=True, inline=True)
                + p_cell(c.get("p_value"), "p_value")
                + p_cell(c.get("p_adjusted"), "p_adjusted", alpha)
                + "</tr>"
            )
    if not rows:
        return ""
    return table("vs-sft", ["policy", "metric", "difference from the reference", "p",
                            "p (Holm)"], rows)


def _high_reward_note(evaluation: Mapping) -> str:
    threshold = evaluation.get("high_reward_threshold")
    if threshold is None:
        return ""
    users = evaluation.get("high_reward_users")
    count = f" ({plain(users)} users)" if users is not None else ""
    return f"<p class='note'>Users whose target has reward ≥ {plain(threshold)}{count}.</p>"


def _high_reward_table(policies: Mapping, order: Sequence[str], evaluation: Mapping) -> str:
    """The policies' figures on users with a high-reward target ("" if none has them)."""
    entries = {n: policies[n].get("high_reward") for n in order}
    entries = {n: h for n, h in entries.items() if isinstance(h, Mapping)}
    if not entries:
        return ""
    metrics = list(dict.fromkeys(
        k for h in entries.values() for k, v in h.items() if is_figure(v)
    ))
    rows = [
        f'<tr data-policy="{escape(n)}"><td class="name">{escape(n)}</td>'
        f'<td data-key="users" data-value="{json_attr(h.get("users"))}">{plain(h.get("users"))}'
        "</td>" + "".join(figure_cell(h.get(m), m, inline=True) for m in metrics) + "</tr>"
        for n, h in entries.items()
    ]
    header = ["policy", "users"] + [escape(metric_label(m)) for m in metrics]
    return _high_reward_note(evaluation) + table("high-reward", header, rows)


def _training_row(name: str, entry: Mapping) -> str:
    judge = entry.get("judge") if isinstance(entry.get("judge"), Mapping) else {}
    members = judge.get("members")
    members_text = ", ".join(plain(m) for m in members) if isinstance(members, list) else ""
    seconds = entry.get("train_seconds")
    seconds_text = f"{seconds:.1f}" if finite(seconds) else "n/a"
    spread = judge.get("member_spread")
    return (
        f'<tr data-policy="{escape(name)}"><td class="name">{escape(name)}</td>'
        f"<td class='name'>{escape(entry.get('algorithm', ''))}</td>"
        f"<td class='name'>{temperature(entry.get('temperature')) or '—'}</td>"
        f'<td data-key="train_seconds" data-value="{json_attr(seconds)}">{seconds_text}</td>'
        f'<td data-key="member_spread" data-value="{json_attr(spread)}">{plain(spread)}</td>'
        f"<td class='text' data-key='members'>{members_text}</td></tr>"
    )


def _training_table(policies: Mapping, order: Sequence[str]) -> str:
    rows = [_training_row(name, policies[name]) for name in order]
    return table("training", ["policy", "algorithm", "temperature", "train seconds",
                              "judge member spread", "judge per member"], rows)


# ---- examples, evidence, setup ----------------------------------------------------------------


def _example(example: Mapping, order: Sequence[str]) -> str:
    """One user's recent history and each policy's ranked recommendations."""
    user = example.get("user")
    history = example.get("history") or []
    recs = example.get("recommendations") or {}
    items = "".join(f"<code class='item'>{escape(i)}</code>" for i in history)
    rows = []
    names = [n for n in order if n in recs] + [n for n in recs if n not in order]
    for name in names:
        ranked = "".join(
            f"<li><span class='rank'>{r}.</span><code class='item'>{escape(i)}</code></li>"
            for r, i in enumerate(recs[name], 1)
        )
        rows.append(f'<tr data-policy="{escape(name)}"><td class="name">{escape(name)}</td>'
                    f"<td class='text'><ol class='recs'>{ranked}</ol></td></tr>")
    return (
        f'<div class="example" data-user="{escape(user)}"><h4>User <code>{escape(user)}</code>'
        f"</h4><p>Recent history: {items or '—'}</p>"
        + (f"<table><thead><tr><th>policy</th><th>top recommendations</th></tr></thead>"
           f"<tbody>{''.join(rows)}</tbody></table>" if rows else "")
        + "</div>"
    )


def _evidence_table(evidence: Mapping, alpha: float) -> str:
    with_p = any(isinstance(f, Mapping) and "p_value" in f for f in evidence.values())
    rows = []
    for name, fig in evidence.items():
        if is_figure(fig) and "low" not in fig:  # a number without an interval (gold_peak_n)
            cell = (f'<td class="text" data-key="figure" data-value="{json_attr(fig["value"])}">'
                    f"{plain(fig['value'])}</td>")
        elif is_figure(fig):
            cell = figure_cell(fig, "figure", signed=True, inline=True)
        else:
            cell = (f'<td class="text" data-key="figure">{escape(json.dumps(fig, default=str))}'
                    "</td>")
        p_value = fig.get("p_value") if isinstance(fig, Mapping) else None
        p_adj = fig.get("p_adjusted") if isinstance(fig, Mapping) else None
        rows.append(
            f'<tr data-name="{escape(name)}"><td class="name">{escape(name)}</td>{cell}'
            + (p_cell(p_value, "p_value") if with_p else "")
            + p_cell(p_adj, "p_adjusted", alpha) + "</tr>"
        )
    header = ["evidence", "figure"] + (["p"] if with_p else []) + ["p (Holm)"]
    return table("evidence", header, rows)


def _evaluation_table(evaluation: Mapping) -> str:
    rows = [
        f'<tr data-key="{escape(k)}"><td class="name">{escape(k)}</td><td class="text">'
        f"{plain(v) if not isinstance(v, Mapping | list) else escape(json.dumps(v, default=str))}"
        "</td></tr>"
        for k, v in evaluation.items()
    ]
    return table("evaluation", ["setting", "value"], rows)


def _configuration(summary: Mapping) -> str:
    """Every configuration and setup block as JSON, then the blocks the page does not know."""
    audit = summary.get("audit") or {}
    named = [
        ("Run configuration (config)", summary.get("config")),
        ("Audit configuration (audit_config)", summary.get("audit_config")),
        ("Audit configuration as the audit recorded it (audit.config)", audit.get("config")
         if audit.get("config") != summary.get("audit_config") else None),
        ("Simulated world (simulation)", summary.get("simulation")),
        ("Data (data)", summary.get("data")),
        ("Split (split)", summary.get("split")),
        ("Sequences (sequences)", summary.get("sequences")),
        ("Audit data (audit.data)", audit.get("data")),
        ("Audit slices (audit.slices)", audit.get("slices")),
    ]
    named += [(f"{key}", value) for key, value in summary.items() if key not in _HANDLED]
    blocks = [f"<div><h4>{escape(title)}</h4>{_json_block(value)}</div>"
              for title, value in named if value is not None]
    return f"<div class='configs'>{''.join(blocks)}</div>" if blocks else ""


# ---- the section ------------------------------------------------------------------------------


def details_section(
    summary: Mapping, policies: Mapping, order: Sequence[str], metrics: Sequence[str],
    reference: Any, alpha: float,
) -> str:
    """The "Details" heading and its collapsible sections, each left out when it has nothing
    to show."""
    audit = summary.get("audit") or {}
    decision = summary.get("decision") or {}
    evaluation = summary.get("evaluation") or {}
    sweep = summary.get("sweep") if isinstance(summary.get("sweep"), Mapping) else {}
    parts = ["<h2 id='details'>Details</h2>"]
    if audit:
        parts.append(_audit_details(audit, alpha))
    if sweep:
        parts.append(_collapsible("Temperature sweep", _sweep_table(sweep)))
    vs_table = _vs_sft_table(policies, order, metrics, alpha)
    if vs_table:
        parts.append(_collapsible(f"Paired differences from {escape(reference)}, every metric",
                                  vs_table))
    high = _high_reward_table(policies, order, evaluation)
    if high:
        parts.append(_collapsible("High-reward targets", high))
    if order:
        parts.append(_collapsible("Training and the judge's members",
                                  _training_table(policies, order)))
    if evaluation:
        parts.append(_collapsible("Evaluation setup", _evaluation_table(evaluation)))
    examples = summary.get("examples") or []
    if examples:
        users = "user" if len(examples) == 1 else "users"
        body = "".join(_example(e, order) for e in examples if isinstance(e, Mapping))
        parts.append(_collapsible(f"Examples ({len(examples)} {users}, in the log's own ids)",
                                  body))
    evidence = decision.get("evidence")
    if isinstance(evidence, Mapping) and evidence:
        parts.append(_collapsible("The decision's evidence", _evidence_table(evidence, alpha)))
    configuration = _configuration(summary)
    if configuration:
        parts.append(_collapsible("Run configuration", configuration))
    return "".join(parts)
