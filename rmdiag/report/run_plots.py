"""report.html's plots, each an ``<img>`` with the PNG inline (empty when there is nothing to
plot): the reward models against the baselines (a forest plot), the policies with their
intervals, and the temperature sweeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.lines import Line2D

from rmdiag.report.html import available, finite, is_figure, new_plot, plot_text, png
from rmdiag.report.run_summary import metric_label, parameter_label, sweep_keys

_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
_CHOSEN_COLOUR, _REFERENCE_COLOUR, _OTHER_COLOUR = "#2f7d32", "#555555", "#4c72b0"
_SWEEP_COLOUR, _DECISION_COLOUR = "#4c72b0", "#c44e52"
_FOREST_PANELS = (
    ("rmse", "RMSE difference, model − baseline\n(left of 0: the model is better)"),
    ("pairwise_accuracy", "pairwise accuracy difference, model − baseline\n"
                          "(right of 0: the model is better)"),
)


def _error(fig: Mapping) -> list[list[float]]:
    """The interval as matplotlib's ``[[below], [above]]`` the value (0 for a missing bound)."""
    value, low, high = fig["value"], fig.get("low"), fig.get("high")
    below = value - low if finite(low) else 0.0
    above = high - value if finite(high) else 0.0
    return [[max(below, 0.0)], [max(above, 0.0)]]


def _x_grid(ax: Any) -> None:
    ax.grid(axis="x", color="#eee")
    ax.tick_params(labelsize=8)


def _row_labels(ax: Any, labels: Sequence[str]) -> None:
    """One row per label, the first at the top."""
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)


# ---- reward models against baselines ---------------------------------------------------------


def _forest_rows(
    comparisons: Sequence[Mapping],
) -> tuple[list[tuple[str, str]], dict[tuple[str, str, str], Mapping]]:
    """The (model, baseline) pairs compared on all held-out events, in order, and their
    comparisons by (model, baseline, metric)."""
    metrics = dict(_FOREST_PANELS)
    rows: list[tuple[str, str]] = []
    found: dict[tuple[str, str, str], Mapping] = {}
    for c in comparisons:
        if c.get("slice") != "all" or c.get("metric") not in metrics:
            continue
        pair = (str(c.get("model")), str(c.get("baseline")))
        if pair not in rows:
            rows.append(pair)
        found[(*pair, str(c["metric"]))] = c
    return rows, found


def _forest_panel(
    ax: Any, rows: Sequence[tuple[str, str]], found: Mapping, metric: str,
    colour: Mapping[str, str], alpha: float,
) -> None:
    """One metric's differences, filled where significant; a rule between models."""
    ax.axvline(0.0, color="#333", lw=1)
    for y, (model, baseline) in enumerate(rows):
        c = found.get((model, baseline, metric))
        if c is None:
            continue
        diff = c.get("difference")
        if not available(diff):
            ax.text(0.0, y, "  n/a", va="center", ha="left", fontsize=8, color="#999")
            continue
        p = c.get("p_adjusted")
        fill = colour[model] if finite(p) and p < alpha else "white"
        ax.errorbar([diff["value"]], [y], xerr=_error(diff), capsize=3, fmt="o",
                    color=colour[model], ms=6, lw=1.5, mfc=fill, mew=1.5)
    for y in range(1, len(rows)):
        if rows[y][0] != rows[y - 1][0]:
            ax.axhline(y - 0.5, color="#ddd", lw=0.8)
    _x_grid(ax)


def plot_forest(comparisons: Sequence[Mapping], alpha: float) -> str:
    """Each reward model's difference from each baseline on all held-out events, two panels."""
    rows, found = _forest_rows(comparisons)
    panels = [p for p in _FOREST_PANELS if any(key[2] == p[0] for key in found)]
    if not rows or not panels:
        return ""
    models = list(dict.fromkeys(model for model, _ in rows))
    colour = {m: _COLOURS[i % len(_COLOURS)] for i, m in enumerate(models)}
    height = 1.3 + 0.32 * len(rows)
    figure, axes = new_plot(1, len(panels), figsize=(11.5, height), sharey=True, squeeze=False)
    for ax, (metric, xlabel) in zip(axes[0], panels, strict=True):
        _forest_panel(ax, rows, found, metric, colour, alpha)
        ax.set_xlabel(xlabel, fontsize=9)
    _row_labels(axes[0][0], [plot_text(f"{m} − {b}") for m, b in rows])
    handles = [
        Line2D([], [], marker="o", ls="", color="#444", mfc="#444",
               label=f"Holm-adjusted p < {alpha:g}"),
        Line2D([], [], marker="o", ls="", color="#444", mfc="white", label="not significant"),
    ]
    figure.legend(handles=handles, loc="upper center", ncol=2, fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 1.0 + 0.25 / height))
    figure.tight_layout()
    return png(figure, "forest plot: reward models against baselines")


# ---- policies ---------------------------------------------------------------------------------


def _policies_panel(
    ax: Any, figs: Sequence[Any], colours: Sequence[str], reference_fig: Any
) -> None:
    """One metric: a point and interval per policy (a row each); the reference's as a line."""
    if available(reference_fig):
        ax.axvline(reference_fig["value"], color=_REFERENCE_COLOUR, ls="--", lw=1)
    for y, (fig, colour) in enumerate(zip(figs, colours, strict=True)):
        if not available(fig):
            ax.text(0.02, y, "n/a", va="center", fontsize=8, color="#999",
                    transform=ax.get_yaxis_transform())
            continue
        ax.errorbar([fig["value"]], [y], xerr=_error(fig), capsize=3, fmt="o", color=colour,
                    ms=6, lw=1.5)
    _x_grid(ax)


def _tag(name: str, chosen: Any, reference: Any) -> str:
    return " (chosen)" if name == chosen else " (reference)" if name == reference else ""


def plot_policies(
    policies: Mapping[str, Mapping], order: Sequence[str], metrics: Sequence[str],
    chosen: Any, reference: Any,
) -> str:
    """Each policy's figure with its interval, one panel per metric; SFT's value as a line."""
    metrics = [m for m in metrics if any(is_figure(policies[n].get(m)) for n in order)]
    if not metrics or not order:
        return ""
    height = 1.2 + 0.34 * len(order)
    figure, axes = new_plot(1, len(metrics), figsize=(11.5, height), sharey=True, squeeze=False)
    colours = [_CHOSEN_COLOUR if name == chosen
               else _REFERENCE_COLOUR if name == reference else _OTHER_COLOUR for name in order]
    for ax, metric in zip(axes[0], metrics, strict=True):
        reference_fig = policies[reference].get(metric) if reference in policies else None
        _policies_panel(ax, [policies[n].get(metric) for n in order], colours, reference_fig)
        ax.set_title(plot_text(metric_label(metric)), fontsize=10)
    labels = [plot_text(name, 30) + _tag(name, chosen, reference) for name in order]
    _row_labels(axes[0][0], labels)
    figure.tight_layout()
    return png(figure, "policies with their intervals")


# ---- temperature sweeps -----------------------------------------------------------------------


def _parameter(info: Mapping) -> str:
    return str(info.get("parameter", "temperature"))


def _decided(decision: Mapping, algorithm: str, parameter: str) -> Any:
    """The temperature the decision chose for ``algorithm`` (None if it chose another)."""
    temperature = decision.get("temperature")
    if decision.get("algorithm") != algorithm or not isinstance(temperature, Mapping):
        return None
    return temperature.get(parameter)


def _overrides(decided: Any, best: Any) -> bool:
    """Whether the decision chose another temperature than the sweep's best."""
    return finite(decided) and decided != best


def _sweep_points(ax: Any, points: Sequence[Mapping], key: str, best: Any) -> None:
    """The points with their intervals joined by a line, "n/a" where one is missing, a star on
    the best."""
    good = [(p["value"], p[key]) for p in points if available(p.get(key))]
    ax.plot([x for x, _ in good], [f["value"] for _, f in good], color=_SWEEP_COLOUR, lw=1,
            alpha=0.6)
    for x, fig in good:
        ax.errorbar([x], [fig["value"]], yerr=_error(fig), capsize=3, fmt="o",
                    color=_SWEEP_COLOUR, ms=5, lw=1.2)
    for point in points:
        if not available(point.get(key)):
            ax.text(point["value"], 0.03, "n/a", ha="center", fontsize=8, color="#999",
                    transform=ax.get_xaxis_transform())
    for x, fig in good:
        if finite(best) and x == best:
            ax.plot([x], [fig["value"]], marker="*", ms=15, color=_CHOSEN_COLOUR, ls="",
                    zorder=5)


def _sweep_axes(ax: Any, algorithm: str, info: Mapping, key: str, xs: Sequence[float]) -> None:
    """Ticks at the swept values (log scale when all are positive), the grid, the titles."""
    log_x = bool(xs) and all(x > 0 for x in xs)
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    if xs:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.tick_params(labelsize=8)
    ax.grid(color="#eee")
    split = f" ({info['split']})" if info.get("split") else ""
    selected = " — selection metric" if key == info.get("metric") else ""
    ax.set_title(plot_text(f"{algorithm}: {metric_label(key)}{split}{selected}", 60), fontsize=9)
    ax.set_xlabel(plot_text(parameter_label(_parameter(info))) + (" (log scale)" if log_x else ""),
                  fontsize=9)


def _sweep_panel(ax: Any, algorithm: str, info: Mapping, key: str, decided: Any) -> None:
    """One metric of one algorithm's sweep; dotted: the best value, dashed: the decision's when
    it differs."""
    points = [p for p in info["points"] if isinstance(p, Mapping) and finite(p.get("value"))]
    best = info.get("best")
    _sweep_points(ax, points, key, best)
    if finite(best):
        ax.axvline(best, color=_CHOSEN_COLOUR, ls=":", lw=1.2)
    if _overrides(decided, best):
        ax.axvline(decided, color=_DECISION_COLOUR, ls="--", lw=1.2)
    _sweep_axes(ax, algorithm, info, key, [p["value"] for p in points])


def plot_sweeps(sweep: Mapping[str, Mapping], decision: Mapping) -> str:
    """Metric against temperature per swept algorithm (log x), intervals, chosen value marked:
    a column per algorithm, a row per metric."""
    algorithms = [a for a, s in sweep.items() if isinstance(s, Mapping) and s.get("points")]
    keys_of = {a: sweep_keys(sweep[a]["points"], sweep[a].get("metric")) for a in algorithms}
    n_rows = max((len(keys) for keys in keys_of.values()), default=0)
    if n_rows == 0:
        return ""
    n_cols = len(algorithms)
    width = min(11.5, 3.9 * n_cols + 0.6) if n_cols > 1 else 6.0
    figure, axes = new_plot(n_rows, n_cols, figsize=(width, 2.7 * n_rows), squeeze=False)
    overridden = False
    for col, algorithm in enumerate(algorithms):
        info = sweep[algorithm]
        decided = _decided(decision, algorithm, _parameter(info))
        overridden = overridden or _overrides(decided, info.get("best"))
        column = [axes[row][col] for row in range(n_rows)]
        for ax, key in zip(column, keys_of[algorithm], strict=False):
            _sweep_panel(ax, algorithm, info, key, decided)
        for ax in column[len(keys_of[algorithm]):]:
            ax.set_visible(False)
    handles = [
        Line2D([], [], marker="*", ms=12, ls=":", color=_CHOSEN_COLOUR, label="best in the sweep"),
    ]
    if overridden:
        handles.append(Line2D([], [], ls="--", color=_DECISION_COLOUR,
                              label="chosen by the decision"))
    figure.tight_layout()
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                  frameon=False, bbox_to_anchor=(0.5, 1.0))
    return png(figure, "temperature sweeps")
