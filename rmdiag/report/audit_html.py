"""audit.html: one self-contained page (tables, and plots as base64 PNG) from an audit's
result and the selection's judgement of it."""

from __future__ import annotations

import numpy as np

from rmdiag.audit import METRICS, SLICES, AuditResult, Figure
from rmdiag.report.curve import curve_note, curve_table, plot_curve
from rmdiag.report.html import (
    CALIBRATION_KEYS,
    detectable_cell,
    escape,
    figure_cell,
    new_plot,
    p_cell,
    page,
    plain,
    plot_text,
    png,
    table,
)
from rmdiag.select import Judgement


def _cell(fig: Figure, key: str, inline: bool = True) -> str:
    return figure_cell(fig.as_dict(), key, inline=inline)


def _plot_error_by_slice(result: AuditResult) -> str:
    names = list(result.models)
    figure, axes = new_plot(1, 2, figsize=(11, 3.6))
    for ax, slice_name in zip(axes, ("all", "unexplored"), strict=True):
        figs = [result.models[n][slice_name]["rmse"] for n in names]
        values = [f.value if f.value is not None else np.nan for f in figs]
        lows = [f.value - f.low if f.value is not None else 0 for f in figs]
        highs = [f.high - f.value if f.value is not None else 0 for f in figs]
        ax.bar(range(len(names)), values, yerr=[lows, highs], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), [plot_text(n) for n in names], rotation=30, ha="right")
        ax.set_title(f"RMSE, {slice_name} slice")
        bounds = [b for f in figs if f.value is not None for b in (f.low, f.high)]
        if bounds:
            ax.set_ylim(0.95 * min(bounds), 1.03 * max(bounds))
        else:
            ax.text(0.5, 0.5, "too few events", ha="center", transform=ax.transAxes)
    return png(figure, "RMSE of every model on each slice")


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
    return png(figure, "ensemble error against member spread")


def _plot_error_vs_popularity(result: AuditResult) -> str:
    popularity = np.log10(1 + result.events["popularity"])
    reward = result.events["reward"]
    figure, ax = new_plot(figsize=(5.5, 3.6))
    for name, pred in result.predictions.items():
        bx, by = _binned(popularity, (pred - reward) ** 2, 8)
        ax.plot(bx, np.sqrt(by), "o-", label=plot_text(name), lw=2 if name == "ensemble" else 1)
    ax.set_xlabel("log10(1 + training events of the item)")
    ax.set_ylabel("RMSE")
    ax.legend(fontsize=7)
    return png(figure, "RMSE of every model against item popularity")


def _intro(result: AuditResult, judgement: Judgement) -> list[str]:
    """The data and how the audit ran, then the verdict and its reasons."""
    data = result.data
    return [
        f"<p>Data: <code>{escape(data['source'])}</code>; {plain(data['train_events'])} "
        f"training events, {plain(data['heldout_events'])} held-out events, "
        f"{plain(data['users'])} users, {plain(data['items'])} items. Ensemble members: "
        f"{escape(', '.join(data['ensemble_members']))}. Intervals at "
        f"{result.config.confidence:.0%}, users resampled; audit took {result.seconds:.1f} s.</p>",
        f"<p class='verdict v-{escape(judgement.verdict)}'>Verdict: "
        f"<strong>{escape(judgement.verdict)}</strong></p><ul>",
        *(f"<li>{escape(reason)}</li>" for reason in judgement.reasons),
        "</ul>",
    ]


def _models_table(result: AuditResult) -> str:
    """Every model's figures on both slices, its training RMSE and its generalization gap
    (intervals under the values, so that the nine columns fit the page)."""
    header = []
    for slice_name in SLICES:
        info = result.slices[slice_name]
        header += [
            f"{escape(metric)}<br><small>{escape(slice_name)} ({plain(info['events'])} events, "
            f"{plain(info['users'])} users)</small>"
            for metric in METRICS
        ]
    rows = []
    for name, slices in result.models.items():
        cells = [_cell(slices[s][m], m, inline=False) for s in SLICES for m in METRICS]
        gap = result.gap.get(name, {})
        cells += [_cell(gap[k], k, inline=False) for k in ("train_rmse", "gap")]
        rows.append(f"<tr><td class='name'>{escape(name)}</td>{''.join(cells)}</tr>")
    return table("models", ["model", *header, "train RMSE", "held-out − train"], rows)


def _comparisons_table(result: AuditResult, alpha: float) -> str:
    rows = [
        "<tr>"
        + "".join(f"<td class='name'>{escape(c[k])}</td>"
                  for k in ("model", "baseline", "slice", "metric"))
        + _cell(c["difference"], "difference")
        + p_cell(c["p_value"], "p_value")
        + p_cell(c["p_adjusted"], "p_adjusted", alpha)
        + detectable_cell(c.get("detectable_difference"))
        + "</tr>"
        for c in result.comparisons
    ]
    header = ["model", "baseline", "slice", "metric", "difference", "p", "p (Holm)",
              "detectable"]
    return table("comparisons", header, rows)


def _calibration_table(result: AuditResult) -> str:
    """Each model's calibration figures on both slices (the binary ones for 0/1 rewards)."""
    keys = [k for k in CALIBRATION_KEYS
            if any(k in parts for slices in result.calibration.values()
                   for parts in slices.values())]
    header = [f"{escape(k)}<br><small>{escape(s)}</small>" for s in SLICES for k in keys]
    rows = [
        f"<tr><td class='name'>{escape(name)}</td>"
        + "".join(_cell(slices[s][k], k, inline=False) if k in slices[s] else "<td></td>"
                  for s in SLICES for k in keys)
        + "</tr>"
        for name, slices in result.calibration.items()
    ]
    return table("calibration", ["model", *header], rows)


def _plot_reliability(result: AuditResult) -> str:
    """Mean observed against mean predicted reward per quantile bin, on all held-out events."""
    figure, ax = new_plot(figsize=(5.5, 3.6))
    bounds = []
    for name, slices in result.calibration.items():
        bins = [b for b in slices["all"].get("reliability", []) if b["observed"].available]
        if not bins:
            continue
        x = np.array([b["predicted"].value for b in bins])
        y = np.array([b["observed"].value for b in bins])
        low = y - np.array([b["observed"].low for b in bins])
        high = np.array([b["observed"].high for b in bins]) - y
        ax.errorbar(x, y, yerr=[low, high], fmt="o-", ms=3, capsize=2, label=plot_text(name),
                    lw=2 if name == "ensemble" else 1)
        bounds += [x.min(), x.max(), y.min(), y.max()]
    if bounds:
        ax.plot([min(bounds), max(bounds)], [min(bounds), max(bounds)], ":", color="#444",
                label="calibrated")
    ax.set_xlabel("mean prediction (quantile bin)")
    ax.set_ylabel("mean observed reward")
    ax.legend(fontsize=7)
    return png(figure, "reliability curve of every model on all held-out events")


def _shift_text(result: AuditResult) -> str:
    shift = result.shift.get("heldout_minus_train")
    if shift is None:
        return ""
    kind = ("ratings under randomized exposure" if result.data.get("heldout_exposure") == "random"
            else "events of the logging policy")
    return (f"<p>Exposure shift (held-out {escape(kind)}): held-out minus training mean reward "
            f"<strong>{escape(shift.text())}</strong>.</p>")


def _spread_table(result: AuditResult) -> str:
    row = "".join(_cell(fig, k) for k, fig in result.spread_error.items())
    return table("spread-error", [escape(k) for k in result.spread_error], [f"<tr>{row}</tr>"])


def _curve_section(result: AuditResult, alpha: float) -> list[str]:
    curve = result.overoptimization
    if curve is None:
        return []
    return ["<h2 id='overoptimization-heading'>Over-optimization: best-of-n</h2>",
            f"<p class='note'>{curve_note(curve)}</p>", plot_curve(curve),
            curve_table(curve, alpha)]


def render_audit_html(result: AuditResult, judgement: Judgement) -> str:
    """audit.html: the verdict and its reasons, every model's figures, every comparison, the
    spread/error correlation, the best-of-n over-optimization curve and three plots."""
    return page("rmdiag audit", [
        "<h1>Reward-model audit</h1>",
        *_intro(result, judgement),
        "<h2>Models</h2>",
        _models_table(result),
        *(f"<p class='note warning'>⚠ {escape(info['coverage_warning'])}.</p>"
          for info in result.slices.values() if info.get("coverage_warning")),
        "<h2>Reward models against baselines</h2><p>Difference = model − baseline "
        "(negative is better for RMSE/MAE, positive for pairwise accuracy); p-values from a "
        "paired test across users, Holm-adjusted within each slice and metric (every reward "
        "model against every baseline).</p>",
        _comparisons_table(result, judgement.config.alpha),
        "<p>detectable: the smallest difference each comparison would find significant with "
        f"{result.config.power:.0%} power at its family's strictest Holm level (paired t-test, "
        "from the per-user spread): a non-significant difference inside it is “could not have "
        "seen one”, not “none”.</p>",
        "<h2>Calibration</h2>",
        _shift_text(result),
        _calibration_table(result),
        "<p>mean_error: mean prediction − reward (calibration-in-the-large, positive = too "
        "high); ece: event-weighted mean |mean prediction − mean observed| over ten quantile "
        "bins of each model's predictions (biased upward when bins are small).</p>",
        "<h2>Does ensemble spread track error?</h2>",
        _spread_table(result),
        "<p>Spearman rank correlation of member spread with the ensemble's "
        "absolute error per slice; mean_spread is the average member standard deviation.</p>",
        *_curve_section(result, judgement.config.alpha),
        "<h2>Plots</h2><div class='plots'>",
        _plot_error_by_slice(result),
        _plot_error_vs_spread(result),
        _plot_error_vs_popularity(result),
        _plot_reliability(result),
        "</div>",
    ])
