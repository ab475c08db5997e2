"""report.html: the run report, one self-contained page rendered from a parsed summary.json.

Summary first (verdict, decision and its reasons, the conclusion, the table of policies), then
the plots (reward models against baselines, the policies with their intervals, the temperature
sweeps), then the details in collapsible sections. The page computes nothing: every number on
it is a figure of the summary, formatted and plotted. Table cells carry the exact numbers as
JSON in ``data-value`` / ``data-low`` / ``data-high`` (and ``data-p-value`` /
``data-p-adjusted``) so that a reader or a test can check them against summary.json. Every
string that comes from the user's data or configuration goes through ``html.escape``; the page
has no scripts and loads nothing from outside.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

__all__ = ["render_run_report"]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
  max-width: 78em; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 0.3em; }
.facts { color: #555; margin-top: 0; }
.summary { border: 1px solid #bbb; border-radius: 6px; padding: 0.6em 1.2em 0.8em;
  background: #fafafa; }
.summary h2 { border: none; margin-top: 0.3em; }
.verdict { font-size: 1.5em; margin: 0.2em 0; }
.verdict strong { padding: 0 0.35em; border-radius: 4px; }
.v-generalizes strong { background: #d7f0d7; } .v-directional strong { background: #fbeccb; }
.v-unreliable strong { background: #f6d3d3; }
.decision { font-size: 1.15em; margin: 0.3em 0; }
.conclusion { font-weight: 600; border-left: 4px solid #4c72b0; padding-left: 0.7em; }
.note { color: #666; font-size: 0.9em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; vertical-align: top; }
th { background: #f0f0f0; text-align: center; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td.name, td.text { text-align: left; }
td.inline { white-space: nowrap; }
tr.group th { text-align: left; background: #e8e8ee; font-weight: 600; }
.configs { display: grid; grid-template-columns: repeat(auto-fill, minmax(24em, 1fr));
  gap: 0 1.2em; }
.configs pre { margin-top: 0.2em; }
.rank { color: #888; font-size: 0.8em; margin-right: 0.15em; }
td small, td .ci { color: #555; white-space: nowrap; }
td .p { color: #555; font-size: 0.9em; }
tr.chosen td { background: #eaf3ea; } tr.chosen td.name { border-left: 4px solid #3a8a3a; }
tr.reference td { background: #f4f4f8; }
.badge { font-size: 0.75em; padding: 0 0.4em; border-radius: 3px; margin-left: 0.3em;
  vertical-align: middle; }
.badge.chosen { background: #3a8a3a; color: #fff; }
.badge.reference { background: #777; color: #fff; }
.na { color: #999; } .sig { font-weight: bold; } tr.best td { background: #eaf3ea; }
img.plot { max-width: 100%; display: block; margin: 0.4em 0 1em; }
details { margin: 0.5em 0; border: 1px solid #ddd; border-radius: 4px; padding: 0.3em 0.8em; }
details > summary { cursor: pointer; font-weight: 600; padding: 0.2em 0; }
details[open] > summary { margin-bottom: 0.4em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code.item { background: #f0f0f0; padding: 0 0.25em; margin: 0 0.1em; border-radius: 3px;
  white-space: nowrap; }
ol.recs { margin: 0; padding-left: 1.6em; } ol.recs li { display: inline; margin-right: 0.4em; }
"""

# Keys of a policy entry that are not metrics.
_POLICY_FIELDS = {"algorithm", "temperature", "train_seconds", "high_reward", "vs_sft"}
# Short names of the temperature parameters; anything else is shown as it is spelled.
_PARAMETER_LABELS = {"lam": "λ", "lambda": "λ", "beta": "β", "kappa": "κ", "tau": "τ"}
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
_CHOSEN_COLOUR, _REFERENCE_COLOUR, _OTHER_COLOUR = "#2f7d32", "#555555", "#4c72b0"


# ---- formatting -------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_attr(value: Any) -> str:
    """A number (or null) as JSON in an attribute: exact, since json writes floats by repr."""
    return _e(json.dumps(value))


def _is_figure(value: Any) -> bool:
    return isinstance(value, Mapping) and "value" in value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _available(fig: Any) -> bool:
    return _is_figure(fig) and _finite(fig.get("value"))


def _decimals(values: Iterable[Any]) -> int | None:
    """Decimals that give the largest magnitude three significant digits (at least three);
    None means "use .3g" (very large or very small numbers)."""
    sizes = [abs(v) for v in values if _finite(v) and v != 0]
    if not sizes:
        return 3
    largest = max(sizes)
    if largest >= 1e5 or largest < 1e-5:
        return None
    return max(3, 2 - math.floor(math.log10(largest)))


def _number(value: Any, decimals: int | None, signed: bool = False) -> str:
    if not _finite(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{value:{sign}.3g}" if decimals is None else f"{value:{sign}.{decimals}f}"


def _plain(value: Any) -> str:
    """A single number outside a figure (a count, a temperature, a threshold)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _p(value: Any) -> str:
    return f"{value:.3g}" if _finite(value) else "n/a"


def _reason(fig: Any) -> str:
    if isinstance(fig, Mapping):
        return str(fig.get("reason") or "not available")
    return "not reported"


def _fig_cell(
    fig: Any,
    key: str,
    signed: bool = False,
    p_value: Any = None,
    p_adjusted: Any = None,
    with_p: bool = False,
    extra: str = "",
    inline: bool = False,
) -> str:
    """One <td> for a figure: value and its interval (below it, or beside it when ``inline``),
    optionally the Holm-adjusted p below that."""
    attrs = f' data-key="{_e(key)}"'
    if _is_figure(fig):
        attrs += "".join(
            f' data-{k}="{_json_attr(fig.get(k))}"' for k in ("value", "low", "high")
        )
    else:
        attrs += ' data-value="null" data-low="null" data-high="null" data-missing="true"'
    if with_p:
        attrs += f' data-p-value="{_json_attr(p_value)}" data-p-adjusted="{_json_attr(p_adjusted)}"'
    attrs += extra
    if not _available(fig):
        reason = _reason(fig)
        return f'<td class="na" title="{_e(reason)}" data-reason="{_e(reason)}"{attrs}>n/a</td>'
    d = _decimals((fig.get("value"), fig.get("low"), fig.get("high")))
    body = (
        f"{_number(fig['value'], d, signed)}{' ' if inline else '<br>'}<span class='ci'>"
        f"[{_number(fig.get('low'), d)}, {_number(fig.get('high'), d)}]</span>"
    )
    if with_p:
        body += f"<br><span class='p'>Holm p {_p(p_adjusted)}</span>"
    cls = ' class="inline"' if inline else ""
    return f"<td{cls}{attrs}>{body}</td>"


def _p_cell(value: Any, key: str, alpha: float | None = None) -> str:
    significant = alpha is not None and _finite(value) and value < alpha
    cls = ' class="sig"' if significant else (' class="na"' if not _finite(value) else "")
    return f'<td{cls} data-key="{_e(key)}" data-value="{_json_attr(value)}">{_p(value)}</td>'


def _metric_label(metric: str) -> str:
    name, at, k = metric.partition("@")
    if at and name.lower() in {"ndcg", "hr", "recall", "precision", "map"}:
        return f"{name.upper()}@{k}"
    labels = {"mrr": "MRR", "judge": "Judge", "true_reward": "True reward", "rmse": "RMSE",
              "mae": "MAE", "pairwise_accuracy": "Pairwise accuracy"}
    return labels.get(metric, metric)


def _parameter_label(name: str) -> str:
    return _PARAMETER_LABELS.get(name, name)


def _temperature(temperature: Any) -> str:
    """'λ = 0.5' (escaped HTML) from {"lam": 0.5}; empty for none."""
    if not isinstance(temperature, Mapping):
        return "" if temperature in (None, "") else _e(temperature)
    return ", ".join(
        f"{_e(_parameter_label(str(k)))} = {_plain(v)}" for k, v in temperature.items()
    )


def _json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return f"<pre>{_e(text)}</pre>"


def _table(table_id: str, header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    return (
        f'<div class="scroll"><table id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# ---- plots ------------------------------------------------------------------------------------


def _label(text: Any, limit: int = 40) -> str:
    """A user string safe for matplotlib: no mathtext, not too long."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _png(figure: Any, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _errorbar(ax: Any, x: float, y: float, fig: Mapping, horizontal: bool, **style: Any) -> None:
    value, low, high = fig["value"], fig.get("low"), fig.get("high")
    lo = value - low if _finite(low) else 0.0
    hi = high - value if _finite(high) else 0.0
    err = [[max(lo, 0.0)], [max(hi, 0.0)]]
    if horizontal:
        ax.errorbar([value], [y], xerr=err, capsize=3, **style)
    else:
        ax.errorbar([x], [value], yerr=err, capsize=3, **style)


def _plot_forest(comparisons: Sequence[Mapping], alpha: float) -> str:
    """Each reward model's difference from each baseline on all held-out events, two panels."""
    panels = [
        ("rmse", "RMSE difference, model − baseline\n(left of 0: the model is better)"),
        ("pairwise_accuracy", "pairwise accuracy difference, model − baseline\n"
                              "(right of 0: the model is better)"),
    ]
    rows: list[tuple[str, str]] = []
    chosen: dict[tuple[str, str, str], Mapping] = {}
    for c in comparisons:
        if c.get("slice") != "all" or c.get("metric") not in dict(panels):
            continue
        pair = (str(c.get("model")), str(c.get("baseline")))
        if pair not in rows:
            rows.append(pair)
        chosen[(*pair, str(c["metric"]))] = c
    panels = [p for p in panels if any(key[2] == p[0] for key in chosen)]
    if not rows or not panels:
        return ""
    models = list(dict.fromkeys(model for model, _ in rows))
    colour = {m: _COLOURS[i % len(_COLOURS)] for i, m in enumerate(models)}
    height = 1.3 + 0.32 * len(rows)
    figure, axes = plt.subplots(1, len(panels), figsize=(11.5, height), sharey=True, squeeze=False)
    for ax, (metric, xlabel) in zip(axes[0], panels, strict=True):
        ax.axvline(0.0, color="#333", lw=1)
        for y, (model, baseline) in enumerate(rows):
            c = chosen.get((model, baseline, metric))
            if c is None:
                continue
            diff = c.get("difference")
            if not _available(diff):
                ax.text(0.0, y, "  n/a", va="center", ha="left", fontsize=8, color="#999")
                continue
            p = c.get("p_adjusted")
            significant = _finite(p) and p < alpha
            _errorbar(ax, 0, y, diff, True, fmt="o", color=colour[model], ms=6, lw=1.5,
                      mfc=colour[model] if significant else "white", mew=1.5)
        for y in range(1, len(rows)):
            if rows[y][0] != rows[y - 1][0]:
                ax.axhline(y - 0.5, color="#ddd", lw=0.8)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", color="#eee")
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(rows)), [_label(f"{m} − {b}") for m, b in rows])
    axes[0][0].set_ylim(len(rows) - 0.5, -0.5)
    handles = [
        Line2D([], [], marker="o", ls="", color="#444", mfc="#444",
               label=f"Holm-adjusted p < {alpha:g}"),
        Line2D([], [], marker="o", ls="", color="#444", mfc="white", label="not significant"),
    ]
    figure.legend(handles=handles, loc="upper center", ncol=2, fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 1.0 + 0.25 / height))
    figure.tight_layout()
    return _png(figure, "forest plot: reward models against baselines")


def _plot_policies(
    policies: Mapping[str, Mapping], order: Sequence[str], metrics: Sequence[str],
    chosen: Any, reference: Any,
) -> str:
    """Each policy's figure with its interval, one panel per metric; SFT's value as a line."""
    metrics = [m for m in metrics if any(_is_figure(policies[n].get(m)) for n in order)]
    if not metrics or not order:
        return ""
    height = 1.2 + 0.34 * len(order)
    figure, axes = plt.subplots(1, len(metrics), figsize=(11.5, height), sharey=True,
                                squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ref_fig = policies.get(reference, {}).get(metric) if reference in policies else None
        if _available(ref_fig):
            ax.axvline(ref_fig["value"], color=_REFERENCE_COLOUR, ls="--", lw=1)
        for y, name in enumerate(order):
            fig = policies[name].get(metric)
            if not _available(fig):
                ax.text(0.02, y, "n/a", va="center", fontsize=8, color="#999",
                        transform=ax.get_yaxis_transform())
                continue
            colour = (_CHOSEN_COLOUR if name == chosen
                      else _REFERENCE_COLOUR if name == reference else _OTHER_COLOUR)
            _errorbar(ax, 0, y, fig, True, fmt="o", color=colour, ms=6, lw=1.5)
        ax.set_title(_label(_metric_label(metric)), fontsize=10)
        ax.grid(axis="x", color="#eee")
        ax.tick_params(labelsize=8)
    labels = []
    for name in order:
        tag = " (chosen)" if name == chosen else " (reference)" if name == reference else ""
        labels.append(_label(name, 30) + tag)
    axes[0][0].set_yticks(range(len(order)), labels)
    axes[0][0].set_ylim(len(order) - 0.5, -0.5)
    figure.tight_layout()
    return _png(figure, "policies with their intervals")


def _sweep_keys(points: Sequence[Mapping], metric: Any) -> list[str]:
    keys = [str(metric)] if metric is not None else []
    for point in points:
        keys += [k for k, v in point.items() if k != "value" and _is_figure(v) and k not in keys]
    return [k for k in keys if any(_is_figure(p.get(k)) for p in points)]


def _plot_sweeps(sweep: Mapping[str, Mapping], decision: Mapping) -> str:
    """Metric against temperature per swept algorithm (log x), intervals, chosen value marked."""
    algorithms = [a for a, s in sweep.items() if isinstance(s, Mapping) and s.get("points")]
    if not algorithms:
        return ""
    keys_of = {a: _sweep_keys(sweep[a]["points"], sweep[a].get("metric")) for a in algorithms}
    n_rows = max(len(k) for k in keys_of.values())
    if n_rows == 0:
        return ""
    n_cols = len(algorithms)
    width = min(11.5, 3.9 * n_cols + 0.6) if n_cols > 1 else 6.0
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(width, 2.7 * n_rows), squeeze=False)
    for col, algorithm in enumerate(algorithms):
        info = sweep[algorithm]
        points = [p for p in info["points"] if isinstance(p, Mapping) and _finite(p.get("value"))]
        parameter = str(info.get("parameter", "temperature"))
        xs = [p["value"] for p in points]
        log_x = bool(xs) and all(x > 0 for x in xs)
        best = info.get("best")
        chosen = None
        if decision.get("algorithm") == algorithm and isinstance(
            decision.get("temperature"), Mapping
        ):
            chosen = decision["temperature"].get(parameter)
        for row in range(n_rows):
            ax = axes[row][col]
            if row >= len(keys_of[algorithm]):
                ax.set_visible(False)
                continue
            key = keys_of[algorithm][row]
            good = [(p["value"], p[key]) for p in points if _available(p.get(key))]
            line = [x for x, _ in good], [f["value"] for _, f in good]
            ax.plot(*line, color="#4c72b0", lw=1, alpha=0.6)
            for x, fig in good:
                _errorbar(ax, x, 0, fig, False, fmt="o", color="#4c72b0", ms=5, lw=1.2)
            for point in points:
                if not _available(point.get(key)):
                    ax.text(point["value"], 0.03, "n/a", ha="center", fontsize=8, color="#999",
                            transform=ax.get_xaxis_transform())
            for x, fig in good:
                if _finite(best) and x == best:
                    ax.plot([x], [fig["value"]], marker="*", ms=15, color=_CHOSEN_COLOUR,
                            ls="", zorder=5)
            if _finite(best):
                ax.axvline(best, color=_CHOSEN_COLOUR, ls=":", lw=1.2)
            if _finite(chosen) and chosen != best:
                ax.axvline(chosen, color="#c44e52", ls="--", lw=1.2)
            if log_x:
                ax.set_xscale("log")
                ax.minorticks_off()
            if xs:
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.tick_params(labelsize=8)
            ax.grid(color="#eee")
            split = f" ({info['split']})" if info.get("split") else ""
            selected = " — selection metric" if key == info.get("metric") else ""
            ax.set_title(_label(f"{algorithm}: {_metric_label(key)}{split}{selected}", 60),
                         fontsize=9)
            ax.set_xlabel(_label(_parameter_label(parameter)) + (" (log scale)" if log_x else ""),
                          fontsize=9)
    handles = [
        Line2D([], [], marker="*", ms=12, ls=":", color=_CHOSEN_COLOUR, label="best in the sweep"),
    ]
    if any(
        decision.get("algorithm") == a
        and isinstance(decision.get("temperature"), Mapping)
        and _finite(decision["temperature"].get(str(sweep[a].get("parameter"))))
        and decision["temperature"].get(str(sweep[a].get("parameter"))) != sweep[a].get("best")
        for a in algorithms
    ):
        handles.append(Line2D([], [], ls="--", color="#c44e52", label="chosen by the decision"))
    figure.tight_layout()
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                  frameon=False, bbox_to_anchor=(0.5, 1.0))
    return _png(figure, "temperature sweeps")


# ---- sections ---------------------------------------------------------------------------------


def _metric_order(policies: Mapping[str, Mapping], k: Any) -> list[str]:
    """The known metrics in a fixed order (those any policy has), then the others."""
    known = [f"ndcg@{k}", f"hr@{k}", "mrr", "judge", "true_reward"]
    present: list[str] = []
    for entry in policies.values():
        for key, value in entry.items():
            if key not in _POLICY_FIELDS and _is_figure(value) and key not in present:
                present.append(key)
    return [m for m in known if m in present] + [m for m in present if m not in known]


def _policy_order(policies: Mapping[str, Any], reference: Any, chosen: Any) -> list[str]:
    names = [n for n in policies if isinstance(policies[n], Mapping)]
    first = [n for n in (reference, chosen) if n in names]
    return list(dict.fromkeys(first + names))


def _facts(summary: Mapping) -> str:
    data = summary.get("data") or {}
    audit_data = (summary.get("audit") or {}).get("data") or {}
    source = data.get("source", audit_data.get("source"))
    bits = []
    if source is not None:
        bits.append(f"data <code>{_e(source)}</code>")
    for key, word in (("events", "events"), ("users", "users"), ("items", "items")):
        value = data.get(key, audit_data.get(key))
        if value is not None:
            bits.append(f"{_plain(value)} {word}")
    split = summary.get("split") or {}
    if split:
        counts = ", ".join(
            f"{_plain(split[k])} {k}" for k in ("train", "valid", "test") if k in split
        )
        method = _e(split.get("method", "split"))
        bits.append(f"{method} split ({counts})" if counts else method)
    evaluation = summary.get("evaluation") or {}
    if evaluation.get("users") is not None:
        bits.append(f"{_plain(evaluation['users'])} test users")
    confidence = evaluation.get("confidence", (summary.get("audit") or {}).get("confidence"))
    if _finite(confidence):
        bits.append(f"intervals at {confidence:.0%}")
    return f"<p class='facts'>{' · '.join(bits)}</p>" if bits else ""


def _summary_box(summary: Mapping) -> str:
    decision = summary.get("decision") or {}
    audit = summary.get("audit") or {}
    verdict = decision.get("verdict", audit.get("verdict"))
    parts = ["<section class='summary' id='summary'><h2>Summary</h2>"]
    if verdict is not None:
        parts.append(
            f"<p class='verdict v-{_e(verdict)}' id='verdict'>Reward model: "
            f"<strong>{_e(verdict)}</strong></p>"
        )
        if audit.get("verdict") not in (None, verdict):
            parts.append(
                f"<p class='note'>Note: audit.json's verdict is <strong>{_e(audit['verdict'])}"
                "</strong>; the decision records the verdict above.</p>"
            )
    if decision.get("algorithm") is not None:
        temperature = _temperature(decision.get("temperature"))
        how = ""
        if "swept" in decision:
            how = (" (temperature chosen by the validation sweep)" if decision["swept"]
                   else " (default temperature, not swept)")
        at = f" at {temperature}" if temperature else ""
        parts.append(
            f"<p class='decision' id='decision'>Decision: post-train with "
            f"<strong>{_e(decision['algorithm'])}</strong>{at}{_e(how)}</p>"
        )
    reasons = decision.get("reasons") or []
    if reasons:
        parts.append("<ul class='reasons'>")
        parts += [f"<li>{_e(r)}</li>" for r in reasons]
        parts.append("</ul>")
    conclusion = summary.get("conclusion") or []
    if isinstance(conclusion, str):
        conclusion = [conclusion]
    if conclusion:
        parts.append("<div class='conclusion' id='conclusion'>")
        parts += [f"<p>{_e(s)}</p>" for s in conclusion]
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _policies_section(summary: Mapping, policies: Mapping, order: Sequence[str]) -> str:
    evaluation = summary.get("evaluation") or {}
    chosen, reference = evaluation.get("chosen"), evaluation.get("reference", "sft")
    metrics = _metric_order(policies, evaluation.get("k", 10))
    diff_metrics = [
        m for m in metrics
        if m in {f"ndcg@{evaluation.get('k', 10)}", "judge", "true_reward"}
        and any(isinstance(policies[n].get("vs_sft"), Mapping) and m in policies[n]["vs_sft"]
                for n in order)
    ]
    ref_name = _e(reference)
    header = ["policy"] + [_e(_metric_label(m)) for m in metrics] + [
        f"Δ {_e(_metric_label(m))}<br><small>vs {ref_name}, paired</small>" for m in diff_metrics
    ]
    rows = []
    for name in order:
        entry = policies[name]
        classes = [c for c, hit in (("chosen", name == chosen), ("reference", name == reference))
                   if hit]
        badges = "".join(f"<span class='badge {c}'>{c}</span>" for c in classes)
        details = _e(entry.get("algorithm", ""))
        temperature = _temperature(entry.get("temperature"))
        if temperature:
            details += f", {temperature}"
        cls = f' class="{" ".join(classes)}"' if classes else ""
        cells = [f"<td class='name'><strong>{_e(name)}</strong>{badges}<br>"
                 f"<small>{details}</small></td>"]
        for metric in metrics:
            fig = entry.get(metric)
            extra = ""
            if metric == "judge" and isinstance(fig, Mapping) and "member_spread" in fig:
                extra = f' data-member-spread="{_json_attr(fig["member_spread"])}"'
            cells.append(_fig_cell(fig, metric, extra=extra))
        vs = entry.get("vs_sft") if isinstance(entry.get("vs_sft"), Mapping) else {}
        for metric in diff_metrics:
            comparison = vs.get(metric)
            if not isinstance(comparison, Mapping):
                label = "the reference itself" if name == reference else "not compared"
                cells.append(
                    f'<td class="na" data-key="vs_sft.{_e(metric)}" data-value="null" '
                    f'data-low="null" data-high="null" data-missing="true" '
                    f'title="{_e(label)}">—</td>'
                )
                continue
            cells.append(_fig_cell(
                comparison.get("difference"), f"vs_sft.{metric}", signed=True, with_p=True,
                p_value=comparison.get("p_value"), p_adjusted=comparison.get("p_adjusted"),
            ))
        rows.append(f'<tr data-policy="{_e(name)}"{cls}>{"".join(cells)}</tr>')
    notes = []
    k = evaluation.get("k")
    if k is not None:
        notes.append(f"metrics at k = {_plain(k)} over the full catalog")
    if evaluation.get("history_excluded") is not None:
        notes.append("items in the user's history excluded" if evaluation["history_excluded"]
                     else "items in the user's history kept")
    if evaluation.get("ties"):
        notes.append(f"ties scored as {_e(evaluation['ties'])}")
    if evaluation.get("judge_members") is not None:
        notes.append(f"judge: mean over {_plain(evaluation['judge_members'])} RM members")
    if evaluation.get("simulated"):
        notes.append("true reward from the simulated world")
    notes.append("each cell: value, [interval]; Δ: paired difference from the reference "
                 "with its Holm-adjusted p")
    return (
        "<h2 id='policies-heading'>Policies</h2>"
        + _table("policies", header, rows)
        + f"<p class='note'>{'; '.join(notes)}.</p>"
    )


def _comparisons_table(comparisons: Sequence[Mapping], alpha: float) -> str:
    header = ["model", "baseline", "slice", "metric", "difference<br><small>model − baseline"
              "</small>", "p", "p (Holm)"]
    rows = []
    for c in comparisons:
        p_adj = c.get("p_adjusted")
        significant = _finite(p_adj) and p_adj < alpha
        attrs = "".join(
            f' data-{k}="{_e(c.get(k))}"' for k in ("model", "baseline", "slice", "metric")
        )
        cls = ' class="sig"' if significant else ""
        rows.append(
            f"<tr{attrs}{cls} data-significant=\"{str(significant).lower()}\">"
            + "".join(f"<td class='name'>{_e(c.get(k))}</td>"
                      for k in ("model", "baseline", "slice", "metric"))
            + _fig_cell(c.get("difference"), "difference", signed=True, inline=True)
            + _p_cell(c.get("p_value"), "p_value")
            + _p_cell(p_adj, "p_adjusted", alpha)
            + "</tr>"
        )
    return _table("comparisons", header, rows)


def _models_table(audit: Mapping) -> str:
    models = {m: per for m, per in (audit.get("models") or {}).items() if isinstance(per, Mapping)}
    slices = list(dict.fromkeys(s for per in models.values() for s in per))
    metrics = list(dict.fromkeys(
        m for per in models.values() for by in per.values() if isinstance(by, Mapping) for m in by
    ))
    info = audit.get("slices") or {}
    rows = []
    for slice_name in slices:
        size = info.get(slice_name) if isinstance(info.get(slice_name), Mapping) else {}
        size_text = ", ".join(f"{_plain(v)} {_e(k)}" for k, v in size.items())
        rows.append(
            f'<tr class="group"><th colspan="{len(metrics) + 1}">slice {_e(slice_name)}'
            f"{': ' + size_text if size_text else ''}</th></tr>"
        )
        for model, per in models.items():
            by = per.get(slice_name)
            if not isinstance(by, Mapping):
                continue
            rows.append(
                f'<tr data-model="{_e(model)}" data-slice="{_e(slice_name)}">'
                f"<td class='name'>{_e(model)}</td>"
                + "".join(_fig_cell(by.get(m), m, inline=True) for m in metrics)
                + "</tr>"
            )
    header = ["model"] + [_e(_metric_label(m)) for m in metrics]
    return _table("models", header, rows)


def _audit_details(audit: Mapping) -> str:
    parts = []
    alpha = (audit.get("config") or {}).get("alpha", 0.05)
    alpha = alpha if _finite(alpha) else 0.05
    reasons = audit.get("reasons") or []
    verdict = audit.get("verdict")
    head = "Reward-model audit" + (f": verdict <em>{_e(verdict)}</em>" if verdict else "")
    body = []
    if reasons:
        body.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    data = audit.get("data") or {}
    if data.get("ensemble_members"):
        members = ", ".join(str(m) for m in data["ensemble_members"])
        body.append(f"<p>Ensemble members: {_e(members)}.</p>")
    if _finite(audit.get("seconds")):
        body.append(f"<p class='note'>The audit took {audit['seconds']:.1f} s.</p>")
    parts.append(f"<details open><summary>{head}</summary>{''.join(body)}</details>")
    comparisons = audit.get("comparisons") or []
    if comparisons:
        parts.append(
            f"<details><summary>All comparisons against baselines ({len(comparisons)})"
            "</summary><p class='note'>Difference = model − baseline (negative is better for "
            "RMSE/MAE, positive for pairwise accuracy); p from a paired test across users, "
            f"Holm-adjusted over all comparisons; bold: adjusted p &lt; {alpha:g}.</p>"
            + _comparisons_table(comparisons, alpha) + "</details>"
        )
    if audit.get("models"):
        parts.append("<details><summary>Reward models and baselines per slice</summary>"
                     + _models_table(audit) + "</details>")
    diagnostics = []
    spread = audit.get("spread_error")
    if isinstance(spread, Mapping) and spread:
        keys = list(spread)
        row = "<tr>" + "".join(_fig_cell(spread[k], k, inline=True) for k in keys) + "</tr>"
        diagnostics.append(
            "<h4>Does ensemble spread track error?</h4>"
            + _table("spread-error", [_e(k) for k in keys], [row])
            + "<p class='note'>Rank correlation of member spread with the ensemble's absolute "
            "error per slice; mean_spread is the average member standard deviation.</p>"
        )
    gap = audit.get("gap")
    if isinstance(gap, Mapping) and gap:
        rows = []
        for model, g in gap.items():
            if not isinstance(g, Mapping):
                continue
            rows.append(
                f'<tr data-model="{_e(model)}"><td class="name">{_e(model)}</td>'
                + _fig_cell(g.get("train_rmse"), "train_rmse", inline=True)
                + _fig_cell(g.get("gap"), "gap", signed=True, inline=True)
                + _p_cell(g.get("p_value"), "p_value")
                + "</tr>"
            )
        diagnostics.append(
            "<h4>Generalization gap</h4>"
            + _table("gap", ["model", "train RMSE", "held-out − train RMSE", "p"], rows)
        )
    known = {"verdict", "reasons", "confidence", "models", "comparisons", "spread_error", "gap",
             "slices", "data", "config", "seconds"}
    for key, value in audit.items():
        if key not in known:
            diagnostics.append(f"<h4>{_e(key)}</h4>{_json_block(value)}")
    if diagnostics:
        parts.append("<details><summary>Audit diagnostics</summary>" + "".join(diagnostics)
                     + "</details>")
    return "".join(parts)


def _sweep_table(sweep: Mapping[str, Mapping]) -> str:
    rows = []
    keys: list[str] = []
    for info in sweep.values():
        if isinstance(info, Mapping):
            for k in _sweep_keys(info.get("points") or [], info.get("metric")):
                if k not in keys:
                    keys.append(k)
    for algorithm, info in sweep.items():
        if not isinstance(info, Mapping):
            continue
        parameter = str(info.get("parameter", ""))
        for point in info.get("points") or []:
            value = point.get("value")
            best = _finite(info.get("best")) and value == info.get("best")
            cls = ' class="best"' if best else ""
            mark = " ★" if best else ""
            rows.append(
                f'<tr data-algorithm="{_e(algorithm)}" data-parameter="{_e(parameter)}" '
                f'data-point="{_json_attr(value)}" data-best="{str(best).lower()}"{cls}>'
                f"<td class='name'>{_e(algorithm)}</td>"
                f"<td class='name'>{_e(_parameter_label(parameter))}</td>"
                f"<td>{_plain(value)}{mark}</td>"
                + "".join(_fig_cell(point.get(k), k, inline=True) for k in keys)
                + "</tr>"
            )
    header = ["algorithm", "parameter", "value"] + [_e(_metric_label(k)) for k in keys]
    notes = []
    for algorithm, info in sweep.items():
        if isinstance(info, Mapping):
            notes.append(
                f"{_e(algorithm)}: {_e(_parameter_label(str(info.get('parameter', ''))))} "
                f"selected by {_e(_metric_label(str(info.get('metric', ''))))} on the "
                f"{_e(info.get('split', ''))} split, best {_plain(info.get('best'))}"
            )
    return _table("sweep", header, rows) + (
        f"<p class='note'>{'; '.join(notes)}. ★ marks the best value.</p>" if notes else ""
    )


def _vs_sft_table(
    policies: Mapping, order: Sequence[str], metrics: Sequence[str], alpha: float
) -> str:
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
                f'<tr data-policy="{_e(name)}" data-metric="{_e(metric)}">'
                f"<td class='name'>{_e(name)}</td><td class='name'>{_e(_metric_label(metric))}"
                "</td>" + _fig_cell(c.get("difference"), "difference", signed=True, inline=True)
                + _p_cell(c.get("p_value"), "p_value")
                + _p_cell(c.get("p_adjusted"), "p_adjusted", alpha)
                + "</tr>"
            )
    if not rows:
        return ""
    return _table("vs-sft", ["policy", "metric", "difference from the reference", "p",
                             "p (Holm)"], rows)


def _high_reward_table(policies: Mapping, order: Sequence[str], evaluation: Mapping) -> str:
    entries = {n: policies[n].get("high_reward") for n in order}
    entries = {n: h for n, h in entries.items() if isinstance(h, Mapping)}
    if not entries:
        return ""
    metrics = list(dict.fromkeys(
        k for h in entries.values() for k, v in h.items() if _is_figure(v)
    ))
    rows = [
        f'<tr data-policy="{_e(n)}"><td class="name">{_e(n)}</td>'
        f'<td data-key="users" data-value="{_json_attr(h.get("users"))}">{_plain(h.get("users"))}'
        "</td>" + "".join(_fig_cell(h.get(m), m, inline=True) for m in metrics) + "</tr>"
        for n, h in entries.items()
    ]
    threshold = evaluation.get("high_reward_threshold")
    note = ""
    if threshold is not None:
        note = (f"<p class='note'>Users whose target has reward ≥ {_plain(threshold)}"
                f"{' (' + _plain(evaluation['high_reward_users']) + ' users)' if evaluation.get('high_reward_users') is not None else ''}"  # noqa: E501
                ".</p>")
    return note + _table("high-reward", ["policy", "users"] + [_e(_metric_label(m))
                                                            for m in metrics], rows)


def _training_table(policies: Mapping, order: Sequence[str]) -> str:
    rows = []
    for name in order:
        entry = policies[name]
        judge = entry.get("judge") if isinstance(entry.get("judge"), Mapping) else {}
        members = judge.get("members")
        members_text = ", ".join(_plain(m) for m in members) if isinstance(members, list) else ""
        seconds = entry.get("train_seconds")
        seconds_text = f"{seconds:.1f}" if _finite(seconds) else "n/a"
        spread = judge.get("member_spread")
        rows.append(
            f'<tr data-policy="{_e(name)}"><td class="name">{_e(name)}</td>'
            f"<td class='name'>{_e(entry.get('algorithm', ''))}</td>"
            f"<td class='name'>{_temperature(entry.get('temperature')) or '—'}</td>"
            f'<td data-key="train_seconds" data-value="{_json_attr(seconds)}">{seconds_text}</td>'
            f'<td data-key="member_spread" data-value="{_json_attr(spread)}">{_plain(spread)}</td>'
            f"<td class='text' data-key='members'>{members_text}</td></tr>"
        )
    return _table("training", ["policy", "algorithm", "temperature", "train seconds",
                               "judge member spread", "judge per member"], rows)


def _examples(examples: Sequence[Any], order: Sequence[str]) -> str:
    parts = []
    for example in examples:
        if not isinstance(example, Mapping):
            continue
        user = example.get("user")
        history = example.get("history") or []
        recs = example.get("recommendations") or {}
        items = "".join(f"<code class='item'>{_e(i)}</code>" for i in history)
        rows = []
        names = [n for n in order if n in recs] + [n for n in recs if n not in order]
        for name in names:
            ranked = "".join(
                f"<li><span class='rank'>{r}.</span><code class='item'>{_e(i)}</code></li>"
                for r, i in enumerate(recs[name], 1)
            )
            rows.append(f'<tr data-policy="{_e(name)}"><td class="name">{_e(name)}</td>'
                        f"<td class='text'><ol class='recs'>{ranked}</ol></td></tr>")
        parts.append(
            f'<div class="example" data-user="{_e(user)}"><h4>User <code>{_e(user)}</code></h4>'
            f"<p>Recent history: {items or '—'}</p>"
            + (f"<table><thead><tr><th>policy</th><th>top recommendations</th></tr></thead>"
               f"<tbody>{''.join(rows)}</tbody></table>" if rows else "")
            + "</div>"
        )
    return "".join(parts)


def _evidence_table(evidence: Mapping, alpha: float) -> str:
    with_p = any(isinstance(f, Mapping) and "p_value" in f for f in evidence.values())
    rows = []
    for name, fig in evidence.items():
        if _is_figure(fig):
            cell = _fig_cell(fig, "figure", signed=True, inline=True)
        else:
            cell = f'<td class="text" data-key="figure">{_e(json.dumps(fig, default=str))}</td>'
        p_value = fig.get("p_value") if isinstance(fig, Mapping) else None
        p_adj = fig.get("p_adjusted") if isinstance(fig, Mapping) else None
        rows.append(
            f'<tr data-name="{_e(name)}"><td class="name">{_e(name)}</td>{cell}'
            + (_p_cell(p_value, "p_value") if with_p else "")
            + _p_cell(p_adj, "p_adjusted", alpha) + "</tr>"
        )
    header = ["evidence", "figure"] + (["p"] if with_p else []) + ["p (Holm)"]
    return _table("evidence", header, rows)


def _evaluation_table(evaluation: Mapping) -> str:
    rows = [
        f'<tr data-key="{_e(k)}"><td class="name">{_e(k)}</td><td class="text">'
        f"{_plain(v) if not isinstance(v, Mapping | list) else _e(json.dumps(v, default=str))}"
        "</td></tr>"
        for k, v in evaluation.items()
    ]
    return _table("evaluation", ["setting", "value"], rows)


_HANDLED = {"data", "split", "sequences", "audit", "config", "audit_config", "simulation",
            "decision", "sweep", "policies", "evaluation", "conclusion", "examples"}


def _configuration(summary: Mapping) -> str:
    blocks = []
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
    for title, value in named:
        if value is not None:
            blocks.append(f"<div><h4>{_e(title)}</h4>{_json_block(value)}</div>")
    return f"<div class='configs'>{''.join(blocks)}</div>" if blocks else ""


# ---- the page ---------------------------------------------------------------------------------


def render_run_report(summary: Mapping[str, Any]) -> str:
    """The run report (report.html) as one self-contained HTML string, from parsed summary.json.

    Any block may be absent (no sweep, no simulated true reward, no audit): its section is left
    out. Figures with a null value read "n/a" with their reason as a tooltip.
    """
    audit = summary.get("audit") or {}
    decision = summary.get("decision") or {}
    evaluation = summary.get("evaluation") or {}
    raw_policies = summary.get("policies") or {}
    policies = {n: p for n, p in raw_policies.items() if isinstance(p, Mapping)}
    chosen = evaluation.get("chosen", decision.get("algorithm"))
    reference = evaluation.get("reference", "sft")
    order = _policy_order(policies, reference, chosen)
    k = evaluation.get("k", 10)
    metrics = _metric_order(policies, k)
    sweep = summary.get("sweep") if isinstance(summary.get("sweep"), Mapping) else {}
    alpha = (audit.get("config") or {}).get("alpha", 0.05)
    alpha = alpha if _finite(alpha) else 0.05

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>rmdiag run report</title>",
        f"<style>{STYLE}</style></head><body><h1>rmdiag run report</h1>",
        _facts(summary),
        _summary_box(summary),
    ]
    if order:
        parts.append(_policies_section(summary, policies, order))

    plots = []
    forest = _plot_forest(audit.get("comparisons") or [], alpha)
    if forest:
        plots.append(
            "<h3>Reward models against baselines</h3><p class='note'>All held-out events; each "
            "model's paired difference from each baseline with its interval; filled: "
            f"Holm-adjusted p &lt; {alpha:g}.</p>" + forest
        )
    policy_plot = _plot_policies(
        policies, order, ["true_reward", "judge", f"ndcg@{k}"], chosen, reference
    )
    if policy_plot:
        plots.append(
            "<h3>Policies</h3><p class='note'>Each policy's figure with its interval; dashed "
            f"line: the reference ({_e(reference)}).</p>" + policy_plot
        )
    sweep_plot = _plot_sweeps(sweep, decision) if sweep else ""
    if sweep_plot:
        plots.append(
            "<h3>Temperature sweep</h3><p class='note'>Validation metric against the "
            "temperature, with intervals; ★ the best value.</p>" + sweep_plot
        )
    if plots:
        parts.append("<h2 id='plots'>Plots</h2>" + "".join(plots))

    parts.append("<h2 id='details'>Details</h2>")
    if audit:
        parts.append(_audit_details(audit))
    if sweep:
        parts.append("<details><summary>Temperature sweep</summary>"
                     + _sweep_table(sweep) + "</details>")
    vs_table = _vs_sft_table(policies, order, metrics, alpha)
    if vs_table:
        parts.append(f"<details><summary>Paired differences from {_e(reference)}, every metric"
                     "</summary>" + vs_table + "</details>")
    high = _high_reward_table(policies, order, evaluation)
    if high:
        parts.append("<details><summary>High-reward targets</summary>" + high + "</details>")
    if order:
        parts.append("<details><summary>Training and the judge's members</summary>"
                     + _training_table(policies, order) + "</details>")
    if evaluation:
        parts.append("<details><summary>Evaluation setup</summary>"
                     + _evaluation_table(evaluation) + "</details>")
    examples = summary.get("examples") or []
    if examples:
        users = "user" if len(examples) == 1 else "users"
        parts.append(f"<details><summary>Examples ({len(examples)} {users}, in the log's own ids)"
                     "</summary>" + _examples(examples, order) + "</details>")
    evidence = decision.get("evidence")
    if isinstance(evidence, Mapping) and evidence:
        parts.append("<details><summary>The decision's evidence</summary>"
                     + _evidence_table(evidence, alpha) + "</details>")
    configuration = _configuration(summary)
    if configuration:
        parts.append("<details><summary>Run configuration</summary>" + configuration
                     + "</details>")
    parts.append("</body></html>\n")
    return "".join(parts)
