"""Pieces every rmdiag HTML page shares: the page shell and its stylesheet, escaping, numbers as
text, table cells for figures and p-values, tables, and plots embedded as base64 PNG (pages are
self-contained files).

Every string that comes from the user's data or configuration goes through ``escape``. A figure
is a mapping with ``value``, ``low``, ``high`` (and ``reason`` when it is unavailable), as
summary.json and ``rmdiag.audit.Figure.as_dict`` write it; its cell carries the exact numbers as
JSON in ``data-value`` / ``data-low`` / ``data-high`` so that a reader or a test can check them
against the file they came from. Plots are ``matplotlib.figure.Figure`` objects made without
pyplot, so rendering a page touches no global matplotlib state (backend, open figures) of the
calling process.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.figure

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
.note.warning { color: #8a5300; background: #fff4e0; padding: 0.3em 0.6em;
  border-left: 3px solid #e0a030; }
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
#policies { font-size: 0.8em; } #policies td .ci { font-size: 0.9em; }
td .p { color: #555; font-size: 0.9em; }
tr.chosen td { background: #eaf3ea; } tr.chosen td.name { border-left: 4px solid #3a8a3a; }
tr.reference td { background: #f4f4f8; }
.badge { font-size: 0.75em; padding: 0 0.4em; border-radius: 3px; margin-left: 0.3em;
  vertical-align: middle; }
.badge.chosen { background: #3a8a3a; color: #fff; }
.badge.reference { background: #777; color: #fff; }
.na { color: #999; } .sig { font-weight: bold; } tr.best td { background: #eaf3ea; }
img.plot { max-width: 100%; display: block; margin: 0.4em 0 1em; }
.plots { display: flex; flex-wrap: wrap; align-items: flex-start; column-gap: 1em; }
details { margin: 0.5em 0; border: 1px solid #ddd; border-radius: 4px; padding: 0.3em 0.8em; }
details > summary { cursor: pointer; font-weight: 600; padding: 0.2em 0; }
details[open] > summary { margin-bottom: 0.4em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
code.item { background: #f0f0f0; padding: 0 0.25em; margin: 0 0.1em; border-radius: 3px;
  white-space: nowrap; }
ol.recs { margin: 0; padding-left: 1.6em; } ol.recs li { display: inline; margin-right: 0.4em; }
"""


def page(title: str, body: Iterable[str]) -> str:
    """A whole page: the head (title, stylesheet), then the pieces of ``body`` (HTML)."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


# ---- text -------------------------------------------------------------------------------------


def escape(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def json_attr(value: Any) -> str:
    """A number (or null) as JSON in an attribute: exact, since json writes floats by repr."""
    return escape(json.dumps(value))


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def decimals(values: Iterable[Any]) -> int | None:
    """Decimals that give the largest magnitude three significant digits (at least three);
    None means "use .3g" (very large or very small numbers)."""
    sizes = [abs(v) for v in values if finite(v) and v != 0]
    if not sizes:
        return 3
    largest = max(sizes)
    if largest >= 1e5 or largest < 1e-5:
        return None
    return max(3, 2 - math.floor(math.log10(largest)))


def number(value: Any, places: int | None, signed: bool = False) -> str:
    """``value`` with ``places`` decimals (None: three significant digits); "n/a" if not finite."""
    if not finite(value):
        return "n/a"
    sign = "+" if signed else ""
    return f"{value:{sign}.3g}" if places is None else f"{value:{sign}.{places}f}"


def plain(value: Any) -> str:
    """A single number outside a figure (a count, a temperature, a threshold), as HTML."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return escape(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def p_text(value: Any) -> str:
    if not finite(value):
        return "n/a"
    # a paired t-test over thousands of users underflows to 0 for large effects
    return "< 1e-300" if value < 1e-300 else f"{value:.3g}"


# ---- figures and their cells ------------------------------------------------------------------


def is_figure(value: Any) -> bool:
    return isinstance(value, Mapping) and "value" in value


def available(fig: Any) -> bool:
    return is_figure(fig) and finite(fig.get("value"))


def _reason(fig: Any) -> str:
    if isinstance(fig, Mapping):
        return str(fig.get("reason") or "not available")
    return "not reported"


def figure_attrs(fig: Any) -> str:
    """The exact numbers as attributes; for no figure at all, nulls and ``data-missing``."""
    if not is_figure(fig):
        return ' data-value="null" data-low="null" data-high="null" data-missing="true"'
    return "".join(f' data-{k}="{json_attr(fig.get(k))}"' for k in ("value", "low", "high"))


def figure_cell(
    fig: Any,
    key: str,
    *,
    signed: bool = False,
    inline: bool = False,
    data: Mapping[str, Any] | None = None,
    below: str = "",
) -> str:
    """One <td> for a figure: the value and its interval (under it, or beside it when
    ``inline``), then the HTML ``below``; "n/a" with the reason as a tooltip when the figure is
    unavailable. ``data`` adds exact numbers as attributes: ``{"p-value": p}`` writes
    ``data-p-value``."""
    attrs = f' data-key="{escape(key)}"' + figure_attrs(fig)
    attrs += "".join(f' data-{name}="{json_attr(v)}"' for name, v in (data or {}).items())
    if not available(fig):
        reason = escape(_reason(fig))
        return f'<td class="na" title="{reason}" data-reason="{reason}"{attrs}>n/a</td>'
    places = decimals((fig["value"], fig.get("low"), fig.get("high")))
    interval = f"[{number(fig.get('low'), places)}, {number(fig.get('high'), places)}]"
    body = (
        f"{number(fig['value'], places, signed)}{' ' if inline else '<br>'}"
        f"<span class='ci'>{interval}</span>{below}"
    )
    cls = ' class="inline"' if inline else ""
    return f"<td{cls}{attrs}>{body}</td>"


# audit.json's calibration figures, in the order both reports show them
CALIBRATION_KEYS = ("mean_error", "ece", "log_loss", "brier", "auc")


def detectable_cell(value: Any) -> str:
    """A comparison's detectable difference (the smallest it could find significant)."""
    text = f"±{value:.3g}" if finite(value) else "n/a"
    return (f"<td class='num' data-key='detectable_difference' "
            f"data-value='{escape(value if finite(value) else 'null')}'>{escape(text)}</td>")


def p_cell(value: Any, key: str, alpha: float | None = None) -> str:
    """A p-value's <td>, bold when it is below ``alpha`` (if given)."""
    significant = alpha is not None and finite(value) and value < alpha
    cls = ' class="sig"' if significant else (' class="na"' if not finite(value) else "")
    return f'<td{cls} data-key="{escape(key)}" data-value="{json_attr(value)}">{p_text(value)}</td>'


def table(table_id: str, header: Sequence[str], rows: Sequence[str]) -> str:
    """A table that scrolls sideways when it is too wide; ``header`` cells and ``rows`` are
    HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    return (
        f'<div class="scroll"><table id="{escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# ---- plots ------------------------------------------------------------------------------------


def plot_text(text: Any, limit: int = 40) -> str:
    """A user string safe for matplotlib: no mathtext, not too long."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def new_plot(
    *args: Any, figsize: tuple[float, float], **options: Any
) -> tuple[matplotlib.figure.Figure, Any]:
    """A figure and its axes (``Figure.subplots(*args, **options)``), made without pyplot."""
    figure = matplotlib.figure.Figure(figsize=figsize)
    return figure, figure.subplots(*args, **options)


def png(figure: matplotlib.figure.Figure, alt: str) -> str:
    """The figure as an ``<img class="plot">`` with the PNG inline."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'
