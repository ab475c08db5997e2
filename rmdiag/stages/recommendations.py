"""``rmdiag evaluate --recommendations FILE``: any model's ranked lists, scored against the held-
out test events of `rmdiag run` with its metrics and intervals.

The file (Parquet or CSV) has one row per recommended (user, item): columns ``user_id``,
``item_id`` (ids as in the data file) and ``rank`` (1 = first; used when present) or ``score``
(higher first). Each user's list is the ranking: the scores go into a score matrix in which
every unlisted item gets -inf, and `evaluators.ranking_metrics` scores it with the user's history
excluded and ties (equal scores, or equal ranks) in expectation -- exactly as a policy's scores
are. Because every listed item is strictly above every unlisted one, a listed target's rank is
exactly its rank within the list; a target outside the list scores 0 in every metric (a top-K
list's NDCG@k, HR@k and MRR are truncated at K; ranking_metrics alone would give such a target
the expectation of its position among the tied -inf block, which is not 0), and so does a test
user with no list. Both are counted in evaluation.json.

A bad file (missing column, null or non-finite rank/score, an id not in the data, a (user, item)
listed twice) is refused naming the file, the column and the first bad row (1-based), before
anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from evaluators import ranking_metrics
from rmdiag import policies
from rmdiag.data import DataError, Interactions, _read_file, _validate_id, validate_number
from rmdiag.stages.evaluation import evaluation_payload, write_evaluation
from rmdiag.stages.inputs import DEFAULT_MAX_LEN, split_data

NAME = "recommendations"
USER_CHUNK = 1024  # users per score matrix (memory: USER_CHUNK x n_items float64)


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def _encode(values: pa.ChunkedArray, raw_ids: np.ndarray, source: str, column: str) -> np.ndarray:
    """Encoded ids of a column of raw ids (compared as text, so 7 and "7" agree; an integral
    float, as a CSV column with one id beyond int64 is read, is refused or cast first)."""
    values = _validate_id(values, source, column)
    lookup = {str(raw): code for code, raw in enumerate(raw_ids.tolist()) if code > 0}
    text = [str(v) for v in values.to_pylist()]
    codes = np.fromiter((lookup.get(t, 0) for t in text), dtype=np.int64, count=len(text))
    if (codes == 0).any():
        row = _first_row(codes == 0)
        raise DataError(f"id {text[row - 1]!r} is not in the data", source=source, column=column,
                        row=row)
    return codes


def read_recommendations(
    path: str | os.PathLike[str], log: Interactions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(encoded users, encoded items, scores -- higher first, the column used) of a file."""
    source = str(path)
    table = _read_file(Path(path))
    for column in ("user_id", "item_id"):
        if column not in table.column_names:
            raise DataError("missing column", source=source, column=column)
    column = "rank" if "rank" in table.column_names else "score"
    if column not in table.column_names:
        raise DataError("missing column: a ranked list needs 'rank' (1 = first) or 'score' "
                        "(higher first)", source=source, column="rank")
    if table.num_rows == 0:
        raise DataError("no rows", source=source)
    numbers = validate_number(table.column(column), source, column, column,
                              booleans=False).to_numpy()
    users = _encode(table.column("user_id"), log.user_ids, source, "user_id")
    items = _encode(table.column("item_id"), log.item_ids, source, "item_id")
    pairs = users * (log.n_items + 1) + items
    _, first, counts = np.unique(pairs, return_index=True, return_counts=True)
    if (counts > 1).any():
        duplicated = np.isin(pairs, pairs[first[counts > 1]])
        rows = np.flatnonzero(duplicated)
        later = rows[np.isin(rows, first, invert=True)]
        raise DataError("this (user_id, item_id) is listed twice", source=source,
                        column="item_id", row=int(later.min()) + 1)
    scores = -numbers if column == "rank" else numbers
    return users, items, scores, column


def recommendation_metrics(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, evalset: policies.EvalSet,
    n_items: int, k: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per test user NDCG@k, HR@k, MRR of the lists (module docstring), whether the user has a
    list and whether the target is in it."""
    test_users = evalset.context.users.numpy()
    row_of = np.full(int(max(test_users.max(), users.max())) + 1, -1, dtype=np.int64)
    row_of[test_users] = np.arange(len(test_users))
    rows = row_of[users]
    keep = rows >= 0  # lists of users without a test event are not scored
    rows, items, scores = rows[keep], items[keep], scores[keep]
    listed = np.zeros(len(test_users), dtype=bool)
    listed[rows] = True
    out = {name: np.zeros(len(test_users)) for name in (f"ndcg@{k}", f"hr@{k}", "mrr")}
    target_listed = np.zeros(len(test_users), dtype=bool)
    for start in range(0, len(test_users), USER_CHUNK):
        stop = min(start + USER_CHUNK, len(test_users))
        inside = (rows >= start) & (rows < stop)
        matrix = np.full((stop - start, n_items + 1), -np.inf)
        matrix[rows[inside] - start, items[inside]] = scores[inside]
        targets = evalset.targets[start:stop]
        metrics = ranking_metrics(matrix, targets, ks=(k,), exclude=evalset.exclude[start:stop],
                                  ties="expected", padding_column=0)
        hit = np.isfinite(matrix[np.arange(stop - start), targets])
        target_listed[start:stop] = hit
        for name in out:
            out[name][start:stop] = np.where(hit, metrics[name], 0.0)
    return out, listed, target_listed


def evaluate_recommendations_files(
    recommendations: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None = None,
    config: policies.PolicyConfig | None = None,
) -> dict[str, Any]:
    """``rmdiag evaluate --recommendations`` as a function (module docstring)."""
    config = config or policies.PolicyConfig()
    log, split = split_data(data, columns)
    users, items, scores, column = read_recommendations(recommendations, log)
    policy_data = policies.policy_data(split, DEFAULT_MAX_LEN)
    values, listed, target_listed = recommendation_metrics(
        users, items, scores, policy_data.test, log.n_items, config.k)
    test_users = set(policy_data.test.context.users.numpy().tolist())
    lengths = np.bincount(users, minlength=log.n_users + 1)
    per_test_user = lengths[policy_data.test.context.users.numpy()]
    truncated_at = int(per_test_user.max()) if per_test_user.size else 0
    about = {
        "recommendations": {
            "path": str(recommendations), "ranked_by": column,
            "truncated_at": truncated_at,
            "list_length": {"min": int(per_test_user[listed].min()) if listed.any() else 0,
                            "max": truncated_at},
            "users_with_list": int(listed.sum()),
            "users_without_list": int((~listed).sum()),
            "targets_in_list": int(target_listed.sum()),
            "users_not_in_test": len(set(np.unique(users).tolist()) - test_users),
            "note": (
                f"each user's metrics count only the listed items (truncated at the list's "
                f"length, at most {truncated_at}): a target outside its user's list scores 0, "
                "and so does a test user without a list; equal "
                f"{column}s are scored in expectation over random tie-breaking; the user's "
                "history is excluded from each list; lists of users without a test event "
                "are ignored"
            ),
        },
        "data": log.source,
        "judge": None,
    }
    payload, high = evaluation_payload(NAME, values, policy_data, config, about)
    write_evaluation(out_dir, payload, log, policy_data, NAME, values, high,
                     {"listed": listed, "target_listed": target_listed})
    return payload
