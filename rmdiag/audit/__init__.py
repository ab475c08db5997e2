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

Per-user values. Every figure is the mean over users of a per-user value, which is what lets one
interval routine (users resampled) serve all of them: for user u with n_u events in a slice of N
events and U users, ``mse_u = U / N * sum of u's squared errors`` (so the mean over users is the
event-level MSE; RMSE's interval is the square root of MSE's), likewise MAE and, over users with
at least one usable pair, pairwise accuracy with the user's pair count in place of n_u. RMSE
differences use the linearization ``rmse + (mse_u - mse) / (2 rmse)`` per user: its mean is the
RMSE exactly and its spread is the delta-method one.

Statistics come from ``evaluators.intervals`` through three small functions
(``rmdiag.audit.statistics``: ``mean_figure``, ``paired_stats``, ``holm``).

Modules: ``config`` (AuditConfig, SLICES, METRICS), ``figures`` (Figure), ``statistics`` (the
interval, paired and Holm wrappers), ``metrics`` (per-user metric values on a slice, spread-error
correlation), ``models`` (fitting the baselines and the ensemble), ``gap`` (train versus
held-out), ``inputs`` (audit_inputs, check_auditable, InsufficientDataError), ``result``
(AuditResult), ``run`` (``audit``).
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
