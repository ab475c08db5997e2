"""`RunSummary`: what `rmdiag run` found, its files (summary.json, decision.json, audit.json/html,
report.html, per_user.parquet) and its text; `conclusion`, the headline sentences."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rmdiag.audit import AuditResult
from rmdiag.outputs import to_json
from rmdiag.report import audit_files_content, audit_json, render_run_report
from rmdiag.select import (
    Decision,
    Judgement,
)


@dataclass
class RunSummary:
    """What `rmdiag run` found; `to_json()` is summary.json."""

    data: dict[str, Any]
    split: dict[str, Any]
    sequences: dict[str, Any]
    audit: AuditResult | None = None
    judgement: Judgement | None = None  # the selection's verdict on `audit`
    decision: Decision | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    conclusion: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the configs used, as JSON
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    memory: dict[str, Any] = field(default_factory=dict)  # peak memory per stage (StageClock)
    per_user: pa.Table | None = field(default=None, repr=False)
    # the trained policies' models by name (sft and each post-trained one), for a caller of
    # `rmdiag.pipeline.run` that goes on with them; in memory only (`.work` keeps the files)
    models: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"data": self.data, "split": self.split,
                                   "sequences": self.sequences}
        if self.audit is not None and self.judgement is not None:
            payload["audit"] = audit_json(self.audit, self.judgement)
        if self.decision is not None:
            payload["decision"] = self.decision.to_json()
        if self.sweep:
            payload["sweep"] = self.sweep
        if self.policies:
            payload |= {"policies": self.policies, "evaluation": self.evaluation,
                        "conclusion": self.conclusion, "examples": self.examples}
        return (payload | self.settings | ({"timings": self.timings} if self.timings else {})
                | ({"memory": self.memory} if self.memory else {}))

    def files(self) -> dict[str, str | bytes]:
        """Every output file, rendered in memory (publish them together)."""
        payload = self.to_json()
        out: dict[str, str | bytes] = {"summary.json": to_json(payload)}
        if self.decision is not None:
            out["decision.json"] = to_json(self.decision.to_json())
        if self.audit is not None and self.judgement is not None:
            out |= audit_files_content(self.audit, self.judgement)
        if self.per_user is not None:
            buffer = io.BytesIO()
            pq.write_table(self.per_user, buffer)
            out["per_user.parquet"] = buffer.getvalue()
        out["report.html"] = render_run_report(payload)
        return out

    def render(self) -> str:
        d, s, q = self.data, self.split, self.sequences
        lines = [
            f"data      {d['source']}: {d['events']} events, {d['users']} users, "
            f"{d['items']} items, {d['duplicate_rows']} exact duplicate rows",
            f"rewards   mean {d['reward']['mean']:.3f}, std {d['reward']['std']:.3f}, "
            f"range [{d['reward']['min']:g}, {d['reward']['max']:g}]",
            f"split     {s['method']}: train {s['train']}, valid {s['valid']}, "
            f"test {s['test']} ({s['test_unexplored_share']:.1%} of test events "
            f"unexplored, m={s['min_count']})",
            f"sequences train {q['train_shape']}, test histories {q['test_history_shape']}, "
            f"mean history length {q['mean_test_history']:.1f}",
        ]
        if self.decision is not None:
            temperature = ", ".join(f"{k} = {v:.3g}" for k, v in self.decision.temperature.items())
            lines.append(f"verdict   {self.decision.verdict} -> {self.decision.algorithm}"
                         + (f" ({temperature})" if temperature else ""))
            lines += [f"          - {reason}" for reason in self.decision.reasons]
        if self.policies:
            k = self.evaluation["k"]
            lines.append(f"policies  test users {self.evaluation['users']}; value [interval]")
            for name, entry in self.policies.items():
                cells = [f"{metric} {_text(entry[metric])}"
                         for metric in (f"ndcg@{k}", "judge", "true_reward") if metric in entry]
                lines.append(f"  {name:10s} " + "; ".join(cells))
            lines += [f"result    {sentence}" for sentence in self.conclusion]
        return "\n".join(lines)

def _text(figure: Mapping[str, Any]) -> str:
    if figure.get("value") is None:
        return "n/a"
    return f"{figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}]"

def conclusion(
    figures: Mapping[str, Mapping[str, Any]], decision: Decision, k: int, alpha: float
) -> list[str]:
    """The headline sentences: how the chosen policy differs from SFT, paired over users, on
    the true reward (simulated worlds), the judge and NDCG@k; a change counts when its
    Holm-adjusted p is below `alpha`."""
    entry = figures.get(decision.algorithm, {})
    differences = entry.get("vs_sft", {})
    temperature = ", ".join(f"{k_} = {v:.3g}" for k_, v in decision.temperature.items())
    name = decision.algorithm + (f" ({temperature})" if temperature else "")
    sentences = []
    for metric, what in (("true_reward", f"the true reward of its top-{k} slate"),
                         ("judge", f"the ensemble judge's value of its top-{k} slate"),
                         (f"ndcg@{k}", f"NDCG@{k} of the held-out next item")):
        if metric not in differences:
            continue
        d = differences[metric]
        fig = d["difference"]
        if d["p_adjusted"] >= alpha:
            verdict = "does not significantly change"
        else:
            verdict = "raises" if fig["value"] > 0 else "lowers"
        sentences.append(
            f"{name} {verdict} {what} against SFT: {fig['value']:+.4f} "
            f"[{fig['low']:+.4f}, {fig['high']:+.4f}] (paired over users, Holm p "
            f"{_p_text(d['p_adjusted'])})."
        )
    return sentences

def _p_text(p: float) -> str:
    # a paired t-test over thousands of users underflows to 0 for large effects
    return "< 1e-300" if p < 1e-300 else f"= {p:.3g}"
