"""Rendering what the other stages computed (it computes nothing of its own).

Modules: ``html`` (what every page shares: the page shell and its stylesheet, escaping, numbers
as text, figure and p-value cells, tables, embedded PNG plots), ``audit_html`` (audit.html),
``audit_output`` (audit.json, and writing both files), and report.html from summary.json:
``run_html`` (the page: summary, policies, where the plots and details go), ``run_plots`` (its
plots), ``run_details`` (its collapsible detail sections) and ``run_summary`` (the labels and
orders they share).
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
