"""The audit's files: audit.json (the audit's figures with the selection's verdict) and
audit.html, rendered in memory and then published atomically."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from rmdiag.audit import AuditResult
from rmdiag.outputs import publish, to_json
from rmdiag.report.audit_html import render_audit_html
from rmdiag.select import Judgement


def audit_json(result: AuditResult, judgement: Judgement) -> dict[str, Any]:
    """audit.json: ``verdict`` and ``reasons`` first, then every figure the audit measured, the
    verdict's ``evidence`` and the thresholds it used (``select_config``)."""
    return {
        "verdict": judgement.verdict,
        "reasons": list(judgement.reasons),
        **result.to_json(),
        "evidence": judgement.evidence,
        "select_config": dataclasses.asdict(judgement.config),
    }


def audit_files_content(result: AuditResult, judgement: Judgement) -> dict[str, str]:
    """audit.json and audit.html rendered in memory (for callers that publish more files)."""
    return {
        "audit.json": to_json(audit_json(result, judgement)),
        "audit.html": render_audit_html(result, judgement),
    }


def write_audit(
    result: AuditResult, judgement: Judgement, out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write audit.json and audit.html into ``out_dir``, each atomically (temp + rename).

    Both are rendered in memory first, so a failure writes nothing.
    """
    return publish(out_dir, audit_files_content(result, judgement))
