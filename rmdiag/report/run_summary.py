"""How report.html reads summary.json: the labels of its metrics and temperature parameters, and
the order in which it shows policies, metrics and the keys of a sweep. Shared by the page's
tables (``run_html``, ``run_details``) and its plots (``run_plots``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rmdiag.report.html import escape, is_figure, plain

# Keys of a policy entry that are not metrics.
_POLICY_FIELDS = {"algorithm", "temperature", "train_seconds", "high_reward", "vs_sft"}
# Short names of the temperature parameters; anything else is shown as it is spelled.
_PARAMETER_LABELS = {"lam": "λ", "lambda": "λ", "beta": "β", "kappa": "κ", "tau": "τ"}
_METRIC_LABELS = {"mrr": "MRR", "judge": "Judge", "true_reward": "True reward", "rmse": "RMSE",
                  "mae": "MAE", "pairwise_accuracy": "Pairwise accuracy"}


def metric_label(metric: str) -> str:
    """'NDCG@10' from 'ndcg@10', 'True reward' from 'true_reward'; others as they are spelled."""
    name, at, k = metric.partition("@")
    if at and name.lower() in {"ndcg", "hr", "recall", "precision", "map"}:
        return f"{name.upper()}@{k}"
    return _METRIC_LABELS.get(metric, metric)


def parameter_label(name: str) -> str:
    return _PARAMETER_LABELS.get(name, name)


def temperature(value: Any) -> str:
    """'λ = 0.5' (escaped HTML) from {"lam": 0.5}; empty for none."""
    if not isinstance(value, Mapping):
        return "" if value in (None, "") else escape(value)
    return ", ".join(f"{escape(parameter_label(str(k)))} = {plain(v)}" for k, v in value.items())


def metric_order(policies: Mapping[str, Mapping], k: Any) -> list[str]:
    """The known metrics in a fixed order (those any policy has), then the others."""
    known = [f"ndcg@{k}", f"hr@{k}", "mrr", "judge", "true_reward"]
    present: list[str] = []
    for entry in policies.values():
        for key, value in entry.items():
            if key not in _POLICY_FIELDS and is_figure(value) and key not in present:
                present.append(key)
    return [m for m in known if m in present] + [m for m in present if m not in known]


def policy_order(policies: Mapping[str, Any], reference: Any, chosen: Any) -> list[str]:
    """The reference, then the chosen policy, then the others as summary.json lists them."""
    names = [n for n in policies if isinstance(policies[n], Mapping)]
    first = [n for n in (reference, chosen) if n in names]
    return list(dict.fromkeys(first + names))


def sweep_keys(points: Sequence[Mapping], metric: Any) -> list[str]:
    """The figures a sweep's points hold, the selection metric first."""
    keys = [str(metric)] if metric is not None else []
    for point in points:
        keys += [k for k, v in point.items() if k != "value" and is_figure(v) and k not in keys]
    return [k for k in keys if any(is_figure(p.get(k)) for p in points)]
