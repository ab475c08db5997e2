"""``rmdiag evaluate --policy DIR``: a saved policy's test-event figures, as `rmdiag run`
scores every policy (`rmdiag.policies.score_policy` and `summarize_policies`): NDCG@k, HR@k and
MRR of the full-catalog ranking of each user's held-out last event (leave-last-out; the
history excluded, ties in expectation), the ensemble judge's slate value with
``--reward-model``, each with its interval over users, on all targets and on high-reward ones.

`evaluation_payload` and `write_evaluation` are shared with ``--recommendations``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rmdiag import policies
from rmdiag.data import Interactions
from rmdiag.outputs import publish, to_json
from rmdiag.persist import load_policy
from rmdiag.rewards.base import torch_threads
from rmdiag.stages.inputs import check_ids, reward_model_for, split_data
from rmdiag.stages.training import config_subset

# `PolicyConfig` fields `rmdiag evaluate` reads (flags without a prefix: --k, --seed, ...).
EVALUATE_FIELDS = ("k", "high_reward", "confidence", "n_resamples", "threads", "seed")
EvaluationFlags = config_subset(policies.PolicyConfig, EVALUATE_FIELDS, "EvaluationFlags")


def evaluation_payload(
    name: str,
    values: Mapping[str, np.ndarray],
    data: policies.PolicyData,
    config: policies.PolicyConfig,
    about: Mapping[str, Any],
) -> tuple[dict[str, Any], np.ndarray]:
    """evaluation.json (``metrics.<metric>`` -> figure, as summary.json's ``policies.<name>``)
    and the high-reward mask."""
    threshold = policies.high_reward_threshold(data, config)
    high = data.test.target_rewards >= threshold
    metrics = policies.summarize_policies({name: values}, high, config, reference=name)[name]
    payload = {
        "name": name,
        **about,
        "metrics": metrics,
        "evaluation": {
            "users": len(data.test), "k": config.k, "confidence": config.confidence,
            "interval": "bca bootstrap over users", "split": "leave-last-out",
            "high_reward_threshold": threshold, "high_reward_users": int(high.sum()),
            "history_excluded": True, "ties": "expected",
        },
        "config": dataclasses.asdict(config),
    }
    return payload, high


def write_evaluation(
    out_dir: str | os.PathLike[str],
    payload: Mapping[str, Any],
    log: Interactions,
    data: policies.PolicyData,
    name: str,
    values: Mapping[str, np.ndarray],
    high: np.ndarray,
    extra_columns: Mapping[str, Any] | None = None,
) -> None:
    """evaluation.json and per_user.parquet (one row per test user, in the user's own ids),
    rendered in memory and published together."""
    table = policies.per_user_table(log, data.test, {name: values}, high)
    for column, array in (extra_columns or {}).items():
        table = table.append_column(column, pa.array(array))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    publish(out_dir, {"evaluation.json": to_json(payload), "per_user.parquet": buffer.getvalue()})


def evaluate_policy_files(
    policy: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None = None,
    reward_model: str | os.PathLike[str] | None = None,
    config: policies.PolicyConfig | None = None,
) -> dict[str, Any]:
    """``rmdiag evaluate --policy`` as a function (module docstring); returns the payload."""
    config = config or policies.PolicyConfig()
    log, split = split_data(data, columns)
    model, metadata = load_policy(policy)
    check_ids(policy, log, "policy")
    ensemble = reward_model_for(reward_model, log)
    with torch_threads(config.threads):
        policy_data = policies.policy_data(
            split, model.config.max_len, policies.uses_timestamps(model.config.architecture))
        judge = policies.make_judge(ensemble, config)
        values = policies.score_policy(model, policy_data.test, config.k, judge)
    name = metadata["algorithm"]
    about = {
        "policy": {"path": str(policy), "algorithm": name,
                   "temperature": metadata["temperature"]},
        "data": log.source,
        "judge": ({"reward_model": str(reward_model), "members": len(ensemble.member_kinds),
                   "mode": "slate"} if ensemble is not None else None),
    }
    payload, high = evaluation_payload(name, values, policy_data, config, about)
    write_evaluation(out_dir, payload, log, policy_data, name, values, high)
    return payload
