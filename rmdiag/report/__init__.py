"""Rendering what the other stages computed (it computes nothing of its own).

Modules: ``html`` (what every page shares: escaping, the stylesheet, figure cells, embedded
PNG plots), ``audit_html`` (audit.html), ``audit_output`` (audit.json, and writing both
files), ``run_html`` (report.html, from summary.json).
"""

from rmdiag.report.audit_html import render_audit_html
from rmdiag.report.audit_output import audit_files_content, audit_json, write_audit
from rmdiag.report.run_html import render_run_report

__all__ = [
    "audit_files_content",
    "audit_json",
    "render_audit_html",
    "render_run_report",
    "write_audit",
]
