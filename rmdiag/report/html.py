"""Pieces every rmdiag HTML page shares: escaping, the stylesheet, a figure's table cell, and a
plot embedded as a base64 PNG (pages are self-contained files).

Every string that comes from the user's data or configuration goes through ``escape``. Plots are
``matplotlib.figure.Figure`` objects made without pyplot, so rendering a page touches no global
matplotlib state (backend, open figures) of the calling process.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib.figure

from rmdiag.audit import Figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
.verdict { font-size: 1.4em; font-weight: bold; } .na { color: #999; }
.sig { font-weight: bold; }
"""


def escape(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def figure_cell(fig: Figure) -> str:
    """A table cell: the value with its interval, or "n/a" with the reason as a tooltip."""
    if fig.value is None:
        return f'<td class="na" title="{escape(fig.reason)}">n/a</td>'
    return f"<td>{fig.value:.3f} <small>[{fig.low:.3f}, {fig.high:.3f}]</small></td>"


def new_plot(*args: Any, figsize: tuple[float, float]) -> tuple[matplotlib.figure.Figure, Any]:
    """A figure and its axes (``Figure.subplots(*args)``), made without pyplot."""
    figure = matplotlib.figure.Figure(figsize=figsize)
    return figure, figure.subplots(*args)


def png(figure: matplotlib.figure.Figure) -> str:
    """The figure as an ``<img>`` with the PNG inline."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'
