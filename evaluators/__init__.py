"""Ranking metrics, intervals and the ensemble judge, usable on their own.

- `ranking_metrics` / `ranking_metrics_streaming` / `ranking_metrics_chunked`: per-user NDCG@k,
  HR@k and MRR over the full catalog, ties scored exactly (`evaluators.metrics`).
- `evaluators.intervals`: `mean_interval`, `paired_difference`, `ratio_interval`,
  `paired_ratio_difference`, `grouped_bootstrap`, `spearman_interval`, `adjust_pvalues`,
  `Figure`.
- `evaluators.judge.EnsembleJudge`: a policy's value under a reward ensemble.
- `evaluators.reference` and `evaluators.strategies`: a plain-Python reference and hypothesis
  strategies to property-test metric code (ours or yours).
"""

from evaluators import intervals, judge, reference
from evaluators.intervals import (
    Figure,
    PairedComparison,
    RatioComparison,
    adjust_pvalues,
    grouped_bootstrap,
    mean_interval,
    mean_intervals,
    paired_difference,
    paired_ratio_difference,
    ratio_interval,
    spearman_interval,
)
from evaluators.judge import EnsembleJudge, JudgeResult
from evaluators.metrics import (
    metric_names,
    ranking_metrics,
    ranking_metrics_chunked,
    ranking_metrics_streaming,
)
from evaluators.protocols import ContextLike, EnsembleLike, RewardFnLike, ScorerLike

__all__ = [
    "ContextLike",
    "EnsembleJudge",
    "EnsembleLike",
    "Figure",
    "JudgeResult",
    "PairedComparison",
    "RatioComparison",
    "RewardFnLike",
    "ScorerLike",
    "adjust_pvalues",
    "grouped_bootstrap",
    "intervals",
    "judge",
    "mean_interval",
    "mean_intervals",
    "metric_names",
    "paired_difference",
    "paired_ratio_difference",
    "ranking_metrics",
    "ranking_metrics_chunked",
    "ranking_metrics_streaming",
    "ratio_interval",
    "reference",
    "spearman_interval",
]
