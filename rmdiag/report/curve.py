"""The best-of-n over-optimization curve on a page (audit.html and report.html): a plot of the
proxy and the gold with their interval bands against the best-of-n KL (n on the top axis), and
a table of the same figures. Both render audit.json's ``overoptimization`` as it is; a curve
that is unavailable shows its reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rmdiag.report.html import (
    available,
    escape,
    figure_cell,
    finite,
    new_plot,
    p_cell,
    plain,
    plot_text,
    png,
    table,
)

_PROXY_COLOUR, _GOLD_COLOUR = "#4c72b0", "#dd8452"


def has_curve(curve: Any) -> bool:
    return isinstance(curve, Mapping) and isinstance(curve.get("n"), list) and bool(curve["n"])


def plot_curve(curve: Mapping[str, Any]) -> str:
    """Proxy and gold against KL = log n − (n − 1)/n, each with its interval band; the dotted
    line marks ``gold_peak_n``. Empty when the curve has no figures."""
    if not has_curve(curve):
        return ""
    figure, ax = new_plot(figsize=(6.4, 3.8))
    kl = list(curve["kl"])
    for key, colour, label in (("proxy", _PROXY_COLOUR, f"proxy: {curve.get('proxy_kind')}"),
                               ("gold", _GOLD_COLOUR, f"gold: {curve.get('gold_kind')}")):
        points = [(x, f) for x, f in zip(kl, curve[key], strict=True) if available(f)]
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.fill_between(xs, [f["low"] for _, f in points], [f["high"] for _, f in points],
                        color=colour, alpha=0.25, lw=0)
        ax.plot(xs, [f["value"] for _, f in points], "o-", color=colour, ms=4,
                label=plot_text(label, 70))
    peak = curve.get("gold_peak_n")
    if peak in curve["n"]:
        ax.axvline(kl[curve["n"].index(peak)], color="#888", ls=":", lw=1,
                   label=f"gold_peak_n = {peak}")
    ax.set_xlabel("KL(best-of-n ‖ SFT) = log n − (n − 1)/n  (nats)")
    ax.set_ylabel("mean value of the best-of-n pick")
    ax.grid(color="#eee")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(kl, [str(n) for n in curve["n"]])
    top.set_xlabel("n (samples from the SFT policy)")
    for axis in (ax, top):
        axis.tick_params(labelsize=8)
    return png(figure, "best-of-n over-optimization curve: proxy and gold against KL")


def curve_table(curve: Mapping[str, Any], alpha: float) -> str:
    """One row per n (KL, proxy, gold), then the peak, the gap and the divergence."""
    if not has_curve(curve):
        return ""
    rows = [
        f'<tr data-n="{escape(n)}"><td>{plain(n)}</td><td>{plain(float(kl))}</td>'
        + figure_cell(proxy, "proxy", inline=True) + figure_cell(gold, "gold", inline=True)
        + "</tr>"
        for n, kl, proxy, gold in zip(curve["n"], curve["kl"], curve["proxy"], curve["gold"],
                                      strict=True)
    ]
    figures = table("overoptimization", ["n", "KL", "proxy", "gold"], rows)
    divergence = curve.get("divergence") or {}
    summary_rows = [
        f"<tr><td class='name'>{escape(label)}</td>"
        + figure_cell(curve.get(key), key, signed=True, inline=True)
        + (p_cell(divergence.get("p_value"), "p_value", alpha) if key == "divergence"
           else "<td></td>")
        + "</tr>"
        for key, label in (
            ("proxy_gold_gap", f"proxy − gold at n = {curve['n'][-1]}"),
            ("proxy_after_peak", "proxy(n_max) − proxy(peak)"),
            ("gold_after_peak", "gold(n_max) − gold(peak)"),
            ("divergence", "gap widening after the peak"),
        )
        if key in curve
    ]
    after = table("overoptimization-peak", ["paired over users", "figure", "p (one-sided)"],
                  summary_rows)
    return figures + after


def _percent(value: Any) -> str:
    return f"{value:.0%}" if finite(value) else "n/a"


def curve_note(curve: Any) -> str:
    """How to read it, or the reason there is no curve (HTML text for a note paragraph)."""
    if not isinstance(curve, Mapping):
        return ""
    if not has_curve(curve):
        return f"No best-of-n curve: {escape(curve.get('reason', 'not computed'))}."
    return (
        f"Best-of-n over {plain(curve.get('samples'))} samples per user from the SFT policy "
        f"({plain(curve.get('users'))} users, each user's validation context): the proxy's pick "
        "among n, scored by the proxy and by the gold (gold: "
        f"{escape(curve.get('gold_kind'))}; proxy: {escape(curve.get('proxy_kind'))}); means "
        f"over users, {_percent(curve.get('confidence'))} intervals "
        f"({escape(curve.get('interval'))}; the bands). gold_peak_n = "
        f"<strong class='gold-peak-n'>{plain(curve.get('gold_peak_n'))}</strong>: "
        f"{escape(curve.get('peak_test'))} (alpha {plain(curve.get('alpha'))})."
    )
