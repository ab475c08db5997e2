"""report.html: the run report, one self-contained page rendered from a parsed summary.json.

Summary first (verdict, decision and its reasons, the conclusion, the table of policies), then
the plots (reward models against baselines, the policies with their intervals, the temperature
sweeps; drawn by ``run_plots``), then the details in collapsible sections (``run_details``). The
page computes nothing: every number on it is a figure of the summary, formatted and plotted.
Table cells carry the exact numbers as JSON in ``data-value`` / ``data-low`` / ``data-high``
(and ``data-p-value`` / ``data-p-adjusted``) so that a reader or a test can check them against
summary.json. Every string that comes from the user's data or configuration goes through
``rmdiag.report.html.escape``; the page has no scripts and loads nothing from outside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rmdiag.report.curve import curve_note, plot_curve
from rmdiag.report.html import (
    escape,
    figure_attrs,
    figure_cell,
    finite,
    p_text,
    page,
    plain,
    table,
)
from rmdiag.report.run_details import details_section
from rmdiag.report.run_plots import plot_forest, plot_policies, plot_sweeps
from rmdiag.report.run_summary import metric_label, metric_order, policy_order, temperature

__all__ = ["render_run_report"]


# ---- the summary ------------------------------------------------------------------------------


def _facts(summary: Mapping) -> str:
    """One line under the title: the data, its size, the split, the test users, the intervals."""
    data = summary.get("data") or {}
    audit_data = (summary.get("audit") or {}).get("data") or {}
    source = data.get("source", audit_data.get("source"))
    bits = []
    if source is not None:
        bits.append(f"data <code>{escape(source)}</code>")
    for key in ("events", "users", "items"):
        value = data.get(key, audit_data.get(key))
        if value is not None:
            bits.append(f"{plain(value)} {key}")
    split = summary.get("split") or {}
    if split:
        counts = ", ".join(
            f"{plain(split[k])} {k}" for k in ("train", "valid", "test") if k in split
        )
        method = escape(split.get("method", "split"))
        bits.append(f"{method} split ({counts})" if counts else method)
    evaluation = summary.get("evaluation") or {}
    if evaluation.get("users") is not None:
        bits.append(f"{plain(evaluation['users'])} test users")
    confidence = evaluation.get("confidence", (summary.get("audit") or {}).get("confidence"))
    if finite(confidence):
        bits.append(f"intervals at {confidence:.0%}")
    return f"<p class='facts'>{' · '.join(bits)}</p>" if bits else ""


def _verdict(decision: Mapping, audit: Mapping) -> str:
    """The reward model's verdict as the decision records it (noting the audit's if it
    differs)."""
    verdict = decision.get("verdict", audit.get("verdict"))
    if verdict is None:
        return ""
    followed = decision.get("rule", "verdict") == "verdict"
    aside = "" if followed else " (reported; the selection rule below chose the algorithm)"
    line = (f"<p class='verdict v-{escape(verdict)}' id='verdict'>Reward model: "
            f"<strong>{escape(verdict)}</strong>{aside}</p>")
    if audit.get("verdict") in (None, verdict):
        return line
    return line + (
        f"<p class='note'>Note: audit.json's verdict is <strong>{escape(audit['verdict'])}"
        "</strong>; the decision records the verdict above.</p>"
    )


def _decision(decision: Mapping) -> str:
    if decision.get("algorithm") is None:
        return ""
    chosen_temperature = temperature(decision.get("temperature"))
    how = ""
    if "swept" in decision:
        how = (" (temperature chosen by the validation sweep)" if decision["swept"]
               else " (default temperature, not swept)")
    at = f" at {chosen_temperature}" if chosen_temperature else ""
    rule = decision.get("rule", "verdict")
    source = ("" if rule == "verdict"
              else f"<br><span class='rule'>by the selection rule: {escape(rule)}</span>")
    return (
        f"<p class='decision' id='decision'>Decision: post-train with "
        f"<strong>{escape(decision['algorithm'])}</strong>{at}{escape(how)}{source}</p>"
    )


def _paragraphs(tag: str, attrs: str, item: str, texts: Sequence[Any]) -> str:
    """``<tag attrs><item>text</item>…</tag>``, escaped; empty for no texts."""
    if not texts:
        return ""
    return f"<{tag}{attrs}>" + "".join(f"<{item}>{escape(t)}</{item}>" for t in texts) + f"</{tag}>"


def _summary_box(summary: Mapping) -> str:
    decision = summary.get("decision") or {}
    conclusion = summary.get("conclusion") or []
    if isinstance(conclusion, str):
        conclusion = [conclusion]
    return (
        "<section class='summary' id='summary'><h2>Summary</h2>"
        + _verdict(decision, summary.get("audit") or {})
        + _decision(decision)
        + _paragraphs("ul", " class='reasons'", "li", decision.get("reasons") or [])
        + _paragraphs("div", " class='conclusion' id='conclusion'", "p", conclusion)
        + "</section>"
    )


# ---- the table of policies --------------------------------------------------------------------


def _paired_cell(comparison: Any, metric: str, is_reference: bool) -> str:
    """The paired difference from the reference with its Holm-adjusted p below; "—" where the
    policy was not compared."""
    key = f"vs_sft.{metric}"
    if not isinstance(comparison, Mapping):
        label = "the reference itself" if is_reference else "not compared"
        return (f'<td class="na" data-key="{escape(key)}"{figure_attrs(None)} '
                f'title="{escape(label)}">—</td>')
    p_adjusted = comparison.get("p_adjusted")
    return figure_cell(
        comparison.get("difference"), key, signed=True,
        data={"p-value": comparison.get("p_value"), "p-adjusted": p_adjusted},
        below=f"<br><span class='p'>Holm p {p_text(p_adjusted)}</span>",
    )


def _policy_row(
    name: str, entry: Mapping, metrics: Sequence[str], diff_metrics: Sequence[str],
    chosen: Any, reference: Any,
) -> str:
    classes = [c for c, hit in (("chosen", name == chosen), ("reference", name == reference))
               if hit]
    badges = "".join(f"<span class='badge {c}'>{c}</span>" for c in classes)
    details = escape(entry.get("algorithm", ""))
    entry_temperature = temperature(entry.get("temperature"))
    if entry_temperature:
        details += f", {entry_temperature}"
    cells = [f"<td class='name'><strong>{escape(name)}</strong>{badges}<br>"
             f"<small>{details}</small></td>"]
    for metric in metrics:
        fig = entry.get(metric)
        data = None
        if metric == "judge" and isinstance(fig, Mapping) and "member_spread" in fig:
            data = {"member-spread": fig["member_spread"]}
        cells.append(figure_cell(fig, metric, data=data))
    vs = entry.get("vs_sft") if isinstance(entry.get("vs_sft"), Mapping) else {}
    cells += [_paired_cell(vs.get(m), m, name == reference) for m in diff_metrics]
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f'<tr data-policy="{escape(name)}"{cls}>{"".join(cells)}</tr>'


def _policies_notes(evaluation: Mapping) -> str:
    notes = []
    k = evaluation.get("k")
    if k is not None:
        notes.append(f"metrics at k = {plain(k)} over the full catalog")
    if evaluation.get("history_excluded") is not None:
        notes.append("items in the user's history excluded" if evaluation["history_excluded"]
                     else "items in the user's history kept")
    if evaluation.get("ties"):
        notes.append(f"ties scored as {escape(evaluation['ties'])}")
    if evaluation.get("judge_members") is not None:
        notes.append(f"judge: mean over {plain(evaluation['judge_members'])} RM members")
    if evaluation.get("simulated"):
        notes.append("true reward from the simulated world")
    notes.append("each cell: value, [interval]; Δ: paired difference from the reference "
                 "with its Holm-adjusted p")
    warnings = [w for w in evaluation.get("coverage_warnings") or [] if isinstance(w, str)]
    return f"<p class='note'>{'; '.join(notes)}.</p>" + "".join(
        f"<p class='note warning'>⚠ {escape(w)}.</p>" for w in warnings)


def _policies_section(
    evaluation: Mapping, policies: Mapping, order: Sequence[str], metrics: Sequence[str]
) -> str:
    """Every policy's figures, then the paired differences from the reference (for the
    metrics that have them)."""
    chosen, reference = evaluation.get("chosen"), evaluation.get("reference", "sft")
    diff_metrics = [
        m for m in metrics
        if m in {f"ndcg@{evaluation.get('k', 10)}", "judge", "true_reward"}
        and any(isinstance(policies[n].get("vs_sft"), Mapping) and m in policies[n]["vs_sft"]
                for n in order)
    ]
    header = ["policy"] + [escape(metric_label(m)) for m in metrics] + [
        f"Δ {escape(metric_label(m))}<br><small>vs {escape(reference)}, paired</small>"
        for m in diff_metrics
    ]
    rows = [_policy_row(name, policies[name], metrics, diff_metrics, chosen, reference)
            for name in order]
    return (
        "<h2 id='policies-heading'>Policies</h2>"
        + table("policies", header, rows)
        + _policies_notes(evaluation)
    )


# ---- the plots --------------------------------------------------------------------------------


def _plots_section(
    summary: Mapping, policies: Mapping, order: Sequence[str], chosen: Any, reference: Any,
    alpha: float,
) -> str:
    """Each plot under its heading and a note on how to read it ("" if there is none)."""
    audit = summary.get("audit") or {}
    decision = summary.get("decision") or {}
    k = (summary.get("evaluation") or {}).get("k", 10)
    sweep = summary.get("sweep") if isinstance(summary.get("sweep"), Mapping) else {}
    plots = [
        ("Reward models against baselines",
         "All held-out events; each model's paired difference from each baseline with its "
         f"interval; filled: Holm-adjusted p &lt; {alpha:g}.",
         plot_forest(audit.get("comparisons") or [], alpha)),
        ("Policies",
         "Each policy's figure with its interval; dashed line: the reference "
         f"({escape(reference)}).",
         plot_policies(policies, order, ["true_reward", "judge", f"ndcg@{k}"], chosen, reference)),
        ("Over-optimization: best-of-n",
         curve_note(audit.get("overoptimization")),
         plot_curve(audit.get("overoptimization") or {})),
        ("Temperature sweep",
         "Validation metric against the temperature, with intervals; ★ the best value.",
         plot_sweeps(sweep, decision) if sweep else ""),
    ]
    shown = [f"<h3>{title}</h3><p class='note'>{note}</p>{image}"
             for title, note, image in plots if image]
    return "<h2 id='plots'>Plots</h2>" + "".join(shown) if shown else ""


# ---- the page ---------------------------------------------------------------------------------


def render_run_report(summary: Mapping[str, Any]) -> str:
    """The run report (report.html) as one self-contained HTML string, from parsed summary.json.

    Any block may be absent (no sweep, no simulated true reward, no audit): its section is left
    out. Figures with a null value read "n/a" with their reason as a tooltip.
    """
    audit = summary.get("audit") or {}
    decision = summary.get("decision") or {}
    evaluation = summary.get("evaluation") or {}
    policies = {n: p for n, p in (summary.get("policies") or {}).items() if isinstance(p, Mapping)}
    chosen = evaluation.get("chosen", decision.get("algorithm"))
    reference = evaluation.get("reference", "sft")
    order = policy_order(policies, reference, chosen)
    metrics = metric_order(policies, evaluation.get("k", 10))
    alpha = (audit.get("config") or {}).get("alpha", 0.05)
    alpha = alpha if finite(alpha) else 0.05
    return page("rmdiag run report", [
        "<h1>rmdiag run report</h1>",
        _facts(summary),
        _summary_box(summary),
        _policies_section(evaluation, policies, order, metrics) if order else "",
        _plots_section(summary, policies, order, chosen, reference, alpha),
        details_section(summary, policies, order, metrics, reference, alpha),
    ])
