"""The reward-model audit: how far can we trust a reward model? (DESIGN.md, Selection)

``audit(train, heldout, config=...)`` fits the four baselines and an ensemble of reward models on
``train`` and measures every one of them on the held-out events, on two slices:

- ``all``: every held-out event;
- ``unexplored``: held-out events whose item was seen fewer than ``min_count`` times in training
  (``rmdiag.split.unexplored_mask``), where a reward model has to generalize.

Metrics (each with an interval resampled over users, so users -- not events -- are the unit):

- ``rmse`` and ``mae`` of the predicted reward;
- ``pairwise_accuracy``: over pairs of one user's held-out events whose rewards differ, the share
  the model orders correctly; a tie in the prediction counts half (so a model that predicts one
  value per user, like ``user_mean``, scores exactly 0.5).

Then: paired differences of every reward model (each kind and ``ensemble``) against every
baseline, users resampled jointly, two-sided p-values Holm-adjusted within each family (one
family per slice and metric: every reward model against every baseline); the
rank correlation of the ensemble's member spread with its absolute error (does disagreement
track error?); and each model's train-versus-held-out RMSE gap. The audit measures; it does not
decide: the verdict is ``rmdiag.select``'s (``judge``), and ``rmdiag.report`` writes both.

Per-user sums: the ratio estimator. Every figure is a ratio of sums over users, which is what
lets one kind of interval (users resampled) serve all of them whatever each user's number of
held-out events: for user u, ``mse`` sums u's squared errors in the slice over u's event count,
so sum over users of the numerators over the sum of the denominators is the event-level MSE
(RMSE is its square root, and RMSE's interval the square root of MSE's ends); likewise MAE, and
pairwise accuracy over the users with a usable pair, with u's correct pairs over u's pair count.
Each bootstrap resample of users recomputes both sums (``evaluators.intervals.ratio_interval``).
A paired difference of two models on a slice shares the denominator and resamples users jointly
(``paired_ratio_difference``); its p-value is a t-test across users of the delta-method
linearization ``v_u = D + f'(R_a) (a_u - R_a n_u) / mean(n) - f'(R_b) (b_u - R_b n_u) / mean(n)``
(f the square root for RMSE, the identity otherwise), whose mean is the difference D. With the same
count for every user (as under leave-last-out) these are the per-user shares' mean and paired
t-test; with unequal counts the share of a fixed denominator
(``U / N * sum``) would carry the variance of the counts too. The train-versus-held-out gap is
such a difference with one denominator per part.

Statistics come from ``evaluators.intervals`` through small functions
(``rmdiag.audit.statistics``: ``ratio_figure``, ``paired_ratio_stats``, ``mean_figure``,
``holm``); the spread-error correlation's interval is ``evaluators.intervals.spearman_interval``
(all events of the drawn users in each resample).

Modules: ``config`` (AuditConfig, SLICES, METRICS), ``figures`` (``Figure``, the project's one
figure class from ``evaluators.intervals``, re-exported), ``statistics`` (the interval, paired and
Holm wrappers), ``metrics`` (per-user metric sums on a slice, spread-error correlation),
``models`` (fitting the baselines and the ensemble), ``gap`` (train versus held-out), ``inputs``
(audit_inputs, check_auditable, InsufficientDataError), ``result`` (AuditResult), ``run``
(``audit``).
"""

from rmdiag.audit.config import METRICS, SLICES, AuditConfig
from rmdiag.audit.figures import Figure
from rmdiag.audit.inputs import InsufficientDataError, audit_inputs, check_auditable
from rmdiag.audit.metrics import within_user_pairs
from rmdiag.audit.result import AuditResult
from rmdiag.audit.run import audit

__all__ = [
    "METRICS",
    "SLICES",
    "AuditConfig",
    "AuditResult",
    "Figure",
    "InsufficientDataError",
    "audit",
    "audit_inputs",
    "check_auditable",
    "within_user_pairs",
]
