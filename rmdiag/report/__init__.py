"""Rendering what the other stages computed (it computes nothing of its own).

Modules: ``html`` (what every page shares: escaping, the stylesheet, figure cells, embedded
PNG plots), ``audit_html`` (audit.html), ``audit_output`` (audit.json, and writing both
files).
"""

from rmdiag.report.audit_html import render_audit_html
from rmdiag.report.audit_output import audit_files_content, audit_json, write_audit

__all__ = ["audit_files_content", "audit_json", "render_audit_html", "write_audit"]
