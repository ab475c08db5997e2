"""``AuditConfig``, every knob of the audit, and the slices and metrics it measures."""

from __future__ import annotations

from dataclasses import dataclass, field

from rmdiag.rewards import BASELINES, REWARD_MODELS
from rmdiag.rewards.lightgbm_model import dask_local_workers
from rmdiag.split import DEFAULT_MIN_COUNT
from trainers.loop import device_problem

SLICES: tuple[str, ...] = ("all", "unexplored")
METRICS: tuple[str, ...] = ("rmse", "mae", "pairwise_accuracy")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class AuditConfig:
    """Every knob of the audit; each field becomes a flag of ``rmdiag audit``.

    Defaults: 5 members (Netflix's ensemble size order; enough for a spread), 95% intervals,
    2,000 bootstrap resamples (percentile intervals are stable to about 0.01 at that size),
    Holm-adjusted p-values. The verdict's thresholds are ``rmdiag.select.SelectConfig``'s.
    """

    kinds: str = field(
        default="lightgbm,sequence",
        metadata=_help("comma-separated reward model kinds in the ensemble (lightgbm, sequence)"),
    )
    n_members: int = field(
        default=5, metadata=_help("ensemble members; member m is of kind m mod len(kinds)")
    )
    bootstrap: bool = field(
        default=True, metadata=_help("fit each member on a bootstrap resample of users")
    )
    min_count: int = field(
        default=DEFAULT_MIN_COUNT,
        metadata=_help("a held-out event is unexplored when its item has fewer training events"),
    )
    confidence: float = field(default=0.95, metadata=_help("confidence level of every interval"))
    power: float = field(
        default=0.8,
        metadata=_help(
            "power of each comparison's detectable difference (the smallest gain it would find "
            "significant, after Holm, with this probability)"
        ),
    )
    n_resamples: int = field(
        default=2000, metadata=_help("bootstrap resamples of users for every interval")
    )
    min_users: int = field(
        default=20, metadata=_help("fewest users a slice needs for a figure (else null)")
    )
    min_pairs: int = field(
        default=20, metadata=_help("fewest usable within-user pairs for pairwise accuracy")
    )
    gap_events: int = field(
        default=5000, metadata=_help("training events sampled for the train/held-out gap")
    )
    lightgbm_rounds: int = field(default=200, metadata=_help("LightGBM boosting rounds (max)"))
    lightgbm_dask: str = field(
        default="",
        metadata=_help(
            "train the LightGBM members on a Dask cluster through lightgbm.dask (needs the "
            "rmdiag[dask] extra): 'local:N' starts N worker processes for each member's fit, an "
            "address such as tcp://host:8786 uses a running scheduler; those members are then "
            "fitted one after another in this process, their trees another draw of, not a copy of, "
            "in-process training ('': in this process)"
        ),
    )
    sequence_epochs: int = field(
        default=20, metadata=_help("sequence reward model epochs (max; early stopping)")
    )
    sequence_dim: int = field(default=32, metadata=_help("sequence reward model hidden size"))
    sequence_device: str = field(default="cpu", metadata=_help(
        "torch device the sequence members train on ('cpu', 'cuda', 'cuda:N'); they predict "
        "on the CPU"))
    threads: int = field(
        default=2,
        metadata=_help(
            "worker processes fitting ensemble members, one thread each (1: fit in this "
            "process; above 1, a calling script needs the usual `if __name__ == '__main__'` "
            "guard of multiprocessing)"
        ),
    )
    seed: int = field(default=0, metadata=_help("random seed (models, folds, bootstrap)"))

    def __post_init__(self) -> None:
        problems = []
        unknown = [k for k in self.kind_list if k not in REWARD_MODELS or k in BASELINES]
        if not self.kind_list or unknown:
            problems.append(
                f"kinds must name trained reward models (lightgbm, sequence), got {self.kinds!r}"
            )
        if self.n_members < 1:
            problems.append(f"n_members must be >= 1, got {self.n_members}")
        if not 0.5 <= self.confidence < 1:
            problems.append(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0.5 <= self.power < 1:
            problems.append(f"power must be in [0.5, 1), got {self.power}")
        if self.n_resamples < 100:
            problems.append(f"n_resamples must be >= 100, got {self.n_resamples}")
        if self.min_users < 2 or self.min_pairs < 1 or self.min_count < 1:
            problems.append("min_users must be >= 2, min_pairs and min_count >= 1")
        if self.lightgbm_dask:
            # the form only: a config read back from audit.json must not need the extra, which
            # fit_models asks for before it fits anything
            try:
                dask_local_workers(self.lightgbm_dask)
            except ValueError as error:
                problems.append(f"lightgbm_dask: {error}")
        device = device_problem(self.sequence_device, here=False)  # availability: fit_models
        if device:
            problems.append(f"sequence_device: {device}")
        if problems:
            raise ValueError("invalid AuditConfig: " + "; ".join(problems))

    @property
    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]
