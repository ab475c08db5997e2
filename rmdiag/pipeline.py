"""`rmdiag run`: the whole job on one log. Today it loads (or simulates) the log, splits it, builds
the sequences every later stage consumes, audits the reward-model ensemble against the baselines
on the held-out events, judges the audit (`rmdiag.select`), and writes summary.json (with the
audit's verdict and figures), audit.json and audit.html; training and evaluation of policies
join as they land. `audit_files` is `rmdiag audit`: read, audit, judge, write."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rmdiag.audit import AuditConfig, AuditResult, audit, audit_inputs
from rmdiag.data import Interactions, encode, load, validate
from rmdiag.outputs import publish, to_json
from rmdiag.report import audit_files_content, audit_json, write_audit
from rmdiag.select import Judgement, SelectConfig, judge
from rmdiag.sequences import event_sequences, user_sequences
from rmdiag.split import Split, leave_last_out, temporal_split, time_quantile, unexplored_mask


@dataclass(frozen=True)
class RunConfig:
    """Settings of `rmdiag run` (each becomes a CLI flag)."""

    max_len: int = field(
        default=50,
        metadata={
            "help": "history length L; 50 is SASRec's setting for sparse logs (Kang & McAuley 2018)"
        },
    )
    split: str = field(
        default="leave-last-out",
        metadata={
            "help": "held-out events: 'leave-last-out' (per user) or 'temporal' (global cut)"
        },
    )
    test_quantile: float = field(
        default=0.9,
        metadata={"help": "temporal split: share of events (by time) before the test period"},
    )
    valid_quantile: float = field(
        default=0.8,
        metadata={"help": "temporal split: share of events (by time) before the validation period"},
    )
    audit: bool = field(
        default=True,
        metadata={"help": "audit the reward-model ensemble (settings: the --audit-* flags)"},
    )

    def __post_init__(self) -> None:
        if self.split not in ("leave-last-out", "temporal"):
            raise ValueError(f"split must be 'leave-last-out' or 'temporal', got {self.split!r}")
        if not 0 < self.valid_quantile < self.test_quantile < 1:
            raise ValueError("need 0 < valid_quantile < test_quantile < 1")
        if self.max_len < 1:
            raise ValueError("max_len must be positive")


@dataclass(frozen=True)
class RunSummary:
    """What `rmdiag run` found; `to_json()` is summary.json."""

    data: dict[str, Any]
    split: dict[str, Any]
    sequences: dict[str, Any]
    audit: AuditResult | None = None
    judgement: Judgement | None = None  # the selection's verdict on `audit`

    def to_json(self) -> dict[str, Any]:
        payload = {"data": self.data, "split": self.split, "sequences": self.sequences}
        if self.audit is not None and self.judgement is not None:
            payload["audit"] = audit_json(self.audit, self.judgement)
        return payload

    def render(self) -> str:
        d, s, q = self.data, self.split, self.sequences
        return "\n".join(
            [
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
            + (
                [f"audit     verdict {self.judgement.verdict}"]
                + [f"          - {reason}" for reason in self.judgement.reasons]
                if self.judgement is not None
                else []
            )
        )


def load_or_simulate(
    data: str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None,
    simulation: Any | None,
) -> Interactions:
    """The user's log, or (no path given) the built-in simulated world's."""
    if data is not None:
        return load(data, columns)
    from rmdiag.simulate import SimulationConfig, World

    world = World(simulation if simulation is not None else SimulationConfig())
    return encode(validate(world.generate(), "<simulated world>"), source="<simulated world>")


def split_log(log: Interactions, config: RunConfig) -> Split:
    if config.split == "temporal":
        return temporal_split(
            log,
            test_start=time_quantile(log, config.test_quantile),
            valid_start=time_quantile(log, config.valid_quantile),
        )
    return leave_last_out(log)


def run(
    config: RunConfig,
    data: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    out: str | os.PathLike[str] | None = None,
    simulation: Any | None = None,
    audit_config: AuditConfig | None = None,
    select_config: SelectConfig | None = None,
) -> RunSummary:
    """Run the job; with `out`, write summary.json (and audit.json, audit.html) there, only once
    everything succeeded."""
    if data is None and simulation is None:
        from rmdiag.simulate import SimulationConfig

        simulation = SimulationConfig()
    log = load_or_simulate(data, columns, simulation)
    split = split_log(log, config)
    train_sequences = user_sequences(split.train, config.max_len)
    test_sequences = event_sequences(split.train.concat(split.valid), split.test, config.max_len)
    audit_config = audit_config or AuditConfig()
    select_config = select_config or SelectConfig()
    unexplored = unexplored_mask(split.train, split.test, audit_config.min_count)
    summary = RunSummary(
        data=log.summary(),
        split={
            "method": config.split,
            "train": len(split.train),
            "valid": len(split.valid),
            "test": len(split.test),
            "min_count": audit_config.min_count,
            "test_unexplored_share": float(unexplored.mean()) if len(unexplored) else 0.0,
        },
        sequences={
            "max_len": config.max_len,
            "train_shape": list(train_sequences.items.shape),
            "test_history_shape": list(test_sequences.history_items.shape),
            "mean_test_history": float((test_sequences.history_items > 0).sum(1).mean())
            if len(test_sequences)
            else 0.0,
        },
    )
    if config.audit:
        # the held-out events are the split's valid and test events, as `rmdiag audit` holds out
        heldout = split.valid.concat(split.test)
        result = audit(split.train, heldout, config=audit_config)
        summary = dataclasses.replace(summary, audit=result, judgement=judge(result, select_config))
    if out is not None:
        payload = summary.to_json() | {
            "config": asdict(config),
            "audit_config": asdict(audit_config),
            "select_config": asdict(select_config),
        }
        if data is None:
            payload["simulation"] = asdict(simulation)
        files = {"summary.json": to_json(payload)}
        if summary.audit is not None and summary.judgement is not None:
            files |= audit_files_content(summary.audit, summary.judgement)
        publish(out, files)
    return summary


def audit_files(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    holdout: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    config: AuditConfig | None = None,
    select_config: SelectConfig | None = None,
) -> tuple[AuditResult, Judgement]:
    """``rmdiag audit --data FILE [--holdout FILE] --out DIR`` as a function: read, audit,
    judge, write audit.json and audit.html.

    Raises ``rmdiag.data.DataError`` (``InsufficientDataError`` included) before writing
    anything when the input is bad or cannot support an audit.
    """
    train, heldout = audit_inputs(data, holdout, columns)
    result = audit(train, heldout, config=config)
    judgement = judge(result, select_config)
    write_audit(result, judgement, out_dir)
    return result, judgement
