"""audit.html: one self-contained page (tables, and plots as base64 PNG) from an audit's
result and the selection's judgement of it."""

from __future__ import annotations

import numpy as np

from rmdiag.audit import AuditResult
from rmdiag.report.html import STYLE, escape, figure_cell, new_plot, png
from rmdiag.select import Judgement


def _plot_error_by_slice(result: AuditResult) -> str:
    names = list(result.models)
    figure, axes = new_plot(1, 2, figsize=(11, 3.6))
    for ax, slice_name in zip(axes, ("all", "unexplored"), strict=True):
        figs = [result.models[n][slice_name]["rmse"] for n in names]
        values = [f.value if f.value is not None else np.nan for f in figs]
        lows = [f.value - f.low if f.value is not None else 0 for f in figs]
        highs = [f.high - f.value if f.value is not None else 0 for f in figs]
        ax.bar(range(len(names)), values, yerr=[lows, highs], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"RMSE, {slice_name} slice")
        bounds = [b for f in figs if f.value is not None for b in (f.low, f.high)]
        if bounds:
            ax.set_ylim(0.95 * min(bounds), 1.03 * max(bounds))
        else:
            ax.text(0.5, 0.5, "too few events", ha="center", transform=ax.transAxes)
    return png(figure)


def _binned(x: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean x and mean y within quantile bins of x (bins with no events dropped)."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return np.array([x.mean()]), np.array([y.mean()])
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    keep = counts > 0
    mean_x = np.bincount(which, weights=x, minlength=len(edges) - 1)[keep] / counts[keep]
    mean_y = np.bincount(which, weights=y, minlength=len(edges) - 1)[keep] / counts[keep]
    return mean_x, mean_y


def _plot_error_vs_spread(result: AuditResult) -> str:
    spread = result.events["spread"]
    error = np.abs(result.predictions["ensemble"] - result.events["reward"])
    figure, ax = new_plot(figsize=(5.5, 3.6))
    ax.scatter(spread, error, s=4, alpha=0.15, color="#888")
    bx, by = _binned(spread, error, 10)
    ax.plot(bx, by, "o-", color="#c44e52", label="mean |error| per spread decile")
    ax.set_xlabel("ensemble member spread (std)")
    ax.set_ylabel("|error| of the ensemble mean")
    ax.legend(fontsize=8)
    return png(figure)


def _plot_error_vs_popularity(result: AuditResult) -> str:
    popularity = np.log10(1 + result.events["popularity"])
    reward = result.events["reward"]
    figure, ax = new_plot(figsize=(5.5, 3.6))
    for name, pred in result.predictions.items():
        bx, by = _binned(popularity, (pred - reward) ** 2, 8)
        ax.plot(bx, np.sqrt(by), "o-", label=name, lw=2 if name == "ensemble" else 1)
    ax.set_xlabel("log10(1 + training events of the item)")
    ax.set_ylabel("RMSE")
    ax.legend(fontsize=7)
    return png(figure)


def render_audit_html(result: AuditResult, judgement: Judgement) -> str:
    """audit.html: the verdict and its reasons, every model's figures, every comparison, the
    spread/error correlation and three plots."""
    metrics = ("rmse", "mae", "pairwise_accuracy")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rmdiag audit</title>",
        f"<style>{STYLE}</style></head><body><h1>Reward-model audit</h1>",
        f"<p>Data: <code>{escape(result.data['source'])}</code>; {result.data['train_events']} "
        f"training events, {result.data['heldout_events']} held-out events, "
        f"{result.data['users']} users, {result.data['items']} items. Ensemble members: "
        f"{escape(', '.join(result.data['ensemble_members']))}. Intervals at "
        f"{result.config.confidence:.0%}, users resampled; audit took {result.seconds:.1f} s.</p>",
        f"<p class='verdict'>Verdict: {escape(judgement.verdict)}</p><ul>",
        *(f"<li>{escape(reason)}</li>" for reason in judgement.reasons),
        "</ul><h2>Models</h2><table><tr><th>model</th>",
    ]
    for slice_name in ("all", "unexplored"):
        info = result.slices[slice_name]
        for metric in metrics:
            parts.append(
                f"<th>{escape(metric)}<br><small>{escape(slice_name)} ({info['events']} events, "
                f"{info['users']} users)</small></th>"
            )
    parts.append("<th>train RMSE</th><th>held-out − train</th></tr>")
    for name, slices in result.models.items():
        parts.append(f"<tr><td class='name'>{escape(name)}</td>")
        for slice_name in ("all", "unexplored"):
            parts.extend(figure_cell(slices[slice_name][m]) for m in metrics)
        gap = result.gap.get(name, {})
        parts.extend(figure_cell(gap[k]) for k in ("train_rmse", "gap"))
        parts.append("</tr>")
    parts.append(
        "</table><h2>Reward models against baselines</h2><p>Difference = model − baseline "
        "(negative is better for RMSE/MAE, positive for pairwise accuracy); p-values from a "
        "paired test across users, Holm-adjusted over all comparisons.</p><table><tr>"
        "<th>model</th><th>baseline</th><th>slice</th><th>metric</th><th>difference</th>"
        "<th>p</th><th>p (Holm)</th></tr>"
    )
    alpha = judgement.config.alpha
    for c in result.comparisons:
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}"
        adjusted = c["p_adjusted"]
        marker = " class='sig'" if adjusted is not None and adjusted < alpha else ""
        q = "n/a" if adjusted is None else f"{adjusted:.3g}"
        parts.append(
            f"<tr><td class='name'>{escape(c['model'])}</td>"
            f"<td class='name'>{escape(c['baseline'])}</td>"
            f"<td class='name'>{escape(c['slice'])}</td>"
            f"<td class='name'>{escape(c['metric'])}</td>"
            f"{figure_cell(c['difference'])}<td>{p}</td><td{marker}>{q}</td></tr>"
        )
    parts.append("</table><h2>Does ensemble spread track error?</h2><table><tr>")
    parts.extend(f"<th>{escape(k)}</th>" for k in result.spread_error)
    parts.append("</tr><tr>")
    parts.extend(figure_cell(fig) for fig in result.spread_error.values())
    parts.append(
        "</tr></table><p>Spearman rank correlation of member spread with the ensemble's "
        "absolute error per slice; mean_spread is the average member standard deviation.</p>"
        "<h2>Plots</h2>"
    )
    parts.append(_plot_error_by_slice(result))
    parts.append(_plot_error_vs_spread(result))
    parts.append(_plot_error_vs_popularity(result))
    parts.append("</body></html>\n")
    return "".join(parts)
