"""`RunConfig`: the settings of `rmdiag run` (each field a CLI flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trainers


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
    overoptimization: bool = field(
        default=True,
        metadata={
            "help": "compute the best-of-n over-optimization curve of the SFT policy against the "
            "audited reward model (audit.json's `overoptimization`, evidence for the decision); "
            "on real data it fits two more ensembles, each on half of the users"
        },
    )
    sweep: bool = field(
        default=True,
        metadata={
            "help": "choose the temperature (λ, β or κ) by a validation sweep; --no-sweep takes "
            "the documented default (rmdiag.policies.TEMPERATURES)"
        },
    )
    compare: str = field(
        default="",
        metadata={
            "help": "policies to train beside SFT and the chosen one: 'all' (every algorithm in "
            "trainers.ALGORITHMS) or a comma-separated list of names"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue the run in --out after its last finished stage: reuse each stage "
            "kept in OUT/.work whose inputs (settings, data file, earlier stages) are unchanged, "
            "resume an interrupted training from its checkpoint (refused, exit 2, naming the "
            "settings that differ, if its inputs changed), recompute the rest; without it a run "
            "starts a fresh OUT/.work (exact with the same --policy-threads)"
        },
    )

    predictions: str = field(
        default="",
        metadata={
            "help": "your own reward model's predictions of the held-out events (Parquet/CSV: "
            "user_id, item_id, [timestamp], prediction, [member]): audited beside the built-in "
            "ensemble, and the verdict (so the algorithm) is on it; the ensemble still serves "
            "as the reward model that training and the judge use"
        },
    )
    predictions_name: str = field(
        default="external", metadata={"help": "name of the --predictions model in the outputs"}
    )

    def __post_init__(self) -> None:
        if self.predictions and not self.audit:
            raise ValueError("--predictions needs the audit (drop --no-audit)")
        if self.split not in ("leave-last-out", "temporal"):
            raise ValueError(f"split must be 'leave-last-out' or 'temporal', got {self.split!r}")
        if not 0 < self.valid_quantile < self.test_quantile < 1:
            raise ValueError("need 0 < valid_quantile < test_quantile < 1")
        if self.max_len < 1:
            raise ValueError("max_len must be positive")
        unknown = [n for n in self.compare_list if n not in trainers.ALGORITHMS]
        if self.compare.strip() != "all" and unknown:
            raise ValueError(
                f"compare must be 'all' or names from {sorted(trainers.ALGORITHMS)}, got "
                f"{', '.join(unknown)}"
            )

    @property
    def compare_list(self) -> list[str]:
        if self.compare.strip() == "all":
            return list(trainers.ALGORITHMS)
        return [n.strip() for n in self.compare.split(",") if n.strip()]
