"""The stand-alone stages (`rmdiag select`, `train`, `evaluate`): the four commands reproduce one
`rmdiag run --no-sweep`; `evaluate --recommendations` scores top-K lists with ties exactly;
bad recommendation files and corrupted audit.json files exit 2 and write nothing."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from evaluators import ranking_metrics
from rmdiag import policies
from rmdiag.audit import AuditConfig
from rmdiag.cli import main
from rmdiag.data import write_parquet
from rmdiag.pipeline import RunConfig, run
from rmdiag.policies import PolicyConfig
from rmdiag.simulate import SimulationConfig, World
from rmdiag.stages.inputs import split_data

TINY_WORLD = SimulationConfig(n_users=150, n_items=80, mean_events=20.0, seed=3)
FAST_AUDIT = AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=20,
                         threads=1)
FAST_POLICY = PolicyConfig(hidden=16, n_blocks=1, sft_epochs=2, post_steps=3, batch_size=64,
                           n_resamples=200, threads=1, progress=False)
MAX_LEN = 20


def flags(config: Any, names: tuple[str, ...] | None = None, prefix: str = "") -> list[str]:
    """The command-line flags that set `config`'s non-default fields (`names` only, if given)."""
    out: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if (names is not None and f.name not in names) or value == f.default:
            continue
        flag = "--" + (prefix + f.name.removeprefix("n_")).replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "log.parquet"
    write_parquet(World(TINY_WORLD).generate(), path)
    return path


@pytest.fixture(scope="module")
def staged(log_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """audit -> select -> train sft -> train <chosen> -> evaluate both, and one run."""
    root = tmp_path_factory.mktemp("stages")
    # a-sft beside the chosen one: the reward model read back from disk must train it exactly
    reference = run(RunConfig(max_len=MAX_LEN, sweep=False, compare="a-sft"), data=log_file,
                    audit_config=FAST_AUDIT, policy_config=FAST_POLICY)
    data = ["--data", str(log_file)]
    assert main(["audit", *data, "--out", str(root / "audit"), *flags(FAST_AUDIT)]) == 0
    assert (root / "audit" / "reward_model" / "ids.json").is_file()
    assert main(["select", "--audit", str(root / "audit" / "audit.json"),
                 "--out", str(root / "select")]) == 0
    decision = json.loads((root / "select" / "decision.json").read_text())
    # the default rule reads the greedy gain, which needs the log and SFT: the reasons say so
    assert "greedy_gain" in decision["rule"]
    assert any("An audit.json alone does not hold greedy_gain" in r for r in decision["reasons"])
    chosen = decision["algorithm"]
    sft_flags = flags(FAST_POLICY, policies_fields("sft"), prefix="policy_")
    assert main(["train", "sft", *data, "--out", str(root / "sft"), "--max-len", str(MAX_LEN),
                 *sft_flags]) == 0
    reward_model = str(root / "audit" / "reward_model")
    extra = [] if policies.reward_model_use(chosen) == "none" else ["--reward-model",
                                                                     reward_model]
    assert main(["train", chosen, *data, "--out", str(root / chosen), "--reference",
                 str(root / "sft"), "--decision", str(root / "select" / "decision.json"),
                 *extra, *flags(FAST_POLICY, policies_fields(chosen), prefix="policy_")]) == 0
    trained = [chosen]
    if chosen != "a-sft":  # at the same default β as the run, given as the Config flag
        beta = policies.default_temperature("a-sft", reference.audit.data["train_reward_std"])
        assert main(["train", "a-sft", *data, "--out", str(root / "a-sft"), "--reference",
                     str(root / "sft"), "--reward-model", reward_model, "--beta",
                     repr(beta["beta"]), *flags(FAST_POLICY, policies_fields("a-sft"),
                                                prefix="policy_")]) == 0
        trained.append("a-sft")
    evaluate = flags(FAST_POLICY, ("k", "high_reward", "confidence", "n_resamples", "threads",
                                   "seed"))
    evaluations = {}
    for name in ("sft", *trained):
        out = root / f"eval-{name}"
        assert main(["evaluate", "--policy", str(root / name), *data, "--out", str(out),
                     "--reward-model", reward_model, *evaluate]) == 0
        evaluations[name] = json.loads((out / "evaluation.json").read_text())
    return {"root": root, "run": reference, "decision": decision, "chosen": chosen,
            "evaluations": evaluations}


def policies_fields(algorithm: str) -> tuple[str, ...]:
    from rmdiag.stages.training import POST_FIELDS, SFT_FIELDS

    return SFT_FIELDS if algorithm == "sft" else POST_FIELDS


METRICS = ("ndcg@10", "hr@10", "mrr", "judge")


def test_stages_reproduce_one_run(staged: dict[str, Any]) -> None:
    summary = staged["run"]
    assert staged["decision"]["algorithm"] == summary.decision.algorithm
    assert staged["decision"]["verdict"] == summary.decision.verdict
    assert staged["decision"]["temperature"] == summary.decision.temperature
    assert any("no validation sweep" in r for r in staged["decision"]["reasons"])
    assert set(staged["evaluations"]) == {"sft", staged["chosen"], "a-sft"}
    for name in staged["evaluations"]:
        evaluation = staged["evaluations"][name]
        for metric in METRICS:
            for part in ("value", "low", "high"):
                assert evaluation["metrics"][metric][part] == summary.policies[name][metric][
                    part], (name, metric, part)
        assert evaluation["metrics"]["high_reward"] == summary.policies[name]["high_reward"]
    per_user = pq.read_table(staged["root"] / "eval-sft" / "per_user.parquet")
    expected = summary.per_user.filter(pa.compute.equal(summary.per_user["policy"], "sft"))
    assert per_user.column("ndcg@10").to_pylist() == expected.column("ndcg@10").to_pylist()
    assert per_user.column("user_id").to_pylist() == expected.column("user_id").to_pylist()


def test_models_of_another_log_are_refused(staged: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.parquet"
    write_parquet(World(dataclasses.replace(TINY_WORLD, seed=4, n_items=70)).generate(), other)
    root = staged["root"]
    code = main(["evaluate", "--policy", str(root / "sft"), "--data", str(other),
                 "--out", str(tmp_path / "e")])
    assert code == 2 and "ids differ" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    code = main(["train", "a-sft", "--data", str(other), "--out", str(tmp_path / "t"),
                 "--reference", str(root / "sft"), "--reward-model",
                 str(root / "audit" / "reward_model")])
    assert code == 2 and "ids differ" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# -- evaluate --recommendations --------------------------------------------------------------


def expected_metrics(scores: dict[int, float], target: int, excluded: set[int],
                     k: int = 10) -> tuple[float, float, float]:
    """NDCG@k, HR@k, MRR of a list by hand: the target's expected position among its ties."""
    if target not in scores:
        return 0.0, 0.0, 0.0
    others = [s for item, s in scores.items() if item != target and item not in excluded]
    above = sum(s > scores[target] for s in others)
    tied = sum(s == scores[target] for s in others)
    positions = [above + j + 1 for j in range(tied + 1)]
    ndcg = float(np.mean([1 / math.log2(p + 1) if p <= k else 0.0 for p in positions]))
    hr = float(np.mean([p <= k for p in positions]))
    mrr = float(np.mean([1 / p for p in positions]))
    return ndcg, hr, mrr


def test_recommendations_with_ties_score_as_ranking_metrics(log_file: Path,
                                                           tmp_path: Path) -> None:
    log, split = split_data(log_file)
    test = policies.policy_data(split, MAX_LEN).test
    rng = np.random.default_rng(0)
    users, items, values = [], [], []
    lists: dict[int, dict[int, float]] = {}
    for row, user in enumerate(test.context.users.numpy().tolist()):
        if row % 7 == 3:
            continue  # no list: scores 0
        history = test.exclude[row][test.exclude[row] > 0].tolist()
        pool = rng.choice(np.arange(1, log.n_items + 1), size=12, replace=False).tolist()
        chosen = ([int(test.targets[row])] if row % 2 == 0 else []) + history[:2] + pool
        chosen = list(dict.fromkeys(chosen))[:15]
        scores = {item: float(rng.integers(0, 3)) for item in chosen}  # many ties
        lists[row] = scores
        users += [user] * len(scores)
        items += list(scores)
        values += list(scores.values())
    table = pa.table({"user_id": log.decode_users(np.array(users)),
                      "item_id": log.decode_items(np.array(items)), "score": values})
    pq.write_table(table, tmp_path / "recs.parquet")
    out = tmp_path / "out"
    assert main(["evaluate", "--recommendations", str(tmp_path / "recs.parquet"),
                 "--data", str(log_file), "--out", str(out), "--resamples", "200"]) == 0
    payload = json.loads((out / "evaluation.json").read_text())
    per_user = pq.read_table(out / "per_user.parquet").to_pydict()
    for row in range(len(test)):
        excluded = set(test.exclude[row][test.exclude[row] > 0].tolist())
        want = expected_metrics(lists.get(row, {}), int(test.targets[row]), excluded)
        got = (per_user["ndcg@10"][row], per_user["hr@10"][row], per_user["mrr"][row])
        assert got == pytest.approx(want, abs=1e-12), row
    # the listed targets, against evaluators.ranking_metrics on the same scores (-inf elsewhere)
    rows = [r for r in lists if int(test.targets[r]) in lists[r]]
    matrix = np.full((len(rows), log.n_items + 1), -np.inf)
    for i, r in enumerate(rows):
        for item, score in lists[r].items():
            matrix[i, item] = score
    direct = ranking_metrics(matrix, test.targets[rows], ks=(10,), exclude=test.exclude[rows],
                             ties="expected", padding_column=0)
    assert np.allclose(np.asarray(per_user["ndcg@10"])[rows], direct["ndcg@10"], atol=1e-12)
    assert np.allclose(np.asarray(per_user["mrr"])[rows], direct["mrr"], atol=1e-12)
    about = payload["recommendations"]
    assert about["truncated_at"] == 15 and about["ranked_by"] == "score"
    assert about["users_without_list"] == len(test) - len(lists)
    assert about["targets_in_list"] == len(rows)
    assert payload["metrics"]["ndcg@10"]["value"] == pytest.approx(
        np.mean(per_user["ndcg@10"]), abs=1e-12)


@pytest.mark.parametrize(
    ("edit", "column", "row"),
    [
        (lambda t: t.drop_columns(["score"]), "rank", None),
        (lambda t: t.set_column(2, "score", pa.array([1.0, float("nan"), 2.0])), "score", 2),
        (lambda t: t.set_column(0, "user_id", pa.array([1, 1, 10**6])), "user_id", 3),
        (lambda t: t.take([0, 1, 0]), "item_id", 3),
        (lambda t: t.drop_columns(["item_id"]), "item_id", None),
    ],
    ids=["no score or rank", "nan score", "unknown user", "duplicate pair", "no item"],
)
def test_bad_recommendation_files_exit_2_and_write_nothing(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, column: str,
    row: int | None,
) -> None:
    log, _ = split_data(log_file)
    good = pa.table({"user_id": log.user_ids[[1, 1, 2]], "item_id": log.item_ids[[1, 2, 3]],
                     "score": [1.0, 0.5, 2.0]})
    path = tmp_path / "bad.parquet"
    pq.write_table(edit(good), path)
    out = tmp_path / "out"
    assert main(["evaluate", "--recommendations", str(path), "--data", str(log_file),
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and f"column '{column}'" in error
    if row is not None:
        assert f"row {row}" in error
    assert not out.exists()


# -- select on a corrupted audit.json --------------------------------------------------------


def test_select_refuses_a_corrupted_audit(staged: dict[str, Any], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    audit = json.loads((staged["root"] / "audit" / "audit.json").read_text())
    cases = {
        "models.ensemble.unexplored.rmse": lambda a: a["models"]["ensemble"]["unexplored"].pop(
            "rmse"),
        "comparisons": lambda a: a.pop("comparisons"),
        "data.train_reward_std": lambda a: a["data"].pop("train_reward_std"),
        "p_adjusted": lambda a: next(c for c in a["comparisons"]
                                     if c["model"] == "ensemble").pop("p_adjusted"),
    }
    for key, corrupt in cases.items():
        broken = json.loads(json.dumps(audit))
        corrupt(broken)
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(broken))
        out = tmp_path / f"out-{key}"
        assert main(["select", "--audit", str(path), "--out", str(out)]) == 2, key
        error = capsys.readouterr().err
        assert str(path) in error and f"'{key}" in error, error
        assert not out.exists()
    (tmp_path / "junk.json").write_text('{"verdict": ')
    assert main(["select", "--audit", str(tmp_path / "junk.json"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "JSON" in capsys.readouterr().err and not (tmp_path / "o").exists()


# -- saved models from the command line: never unpickled, versions checked -------------------


class Smuggled:
    """What a hostile weights file would carry: an object whose unpickling runs code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("unpickled!",))


def test_evaluate_refuses_a_pickle_bearing_policy_and_a_newer_version(
    staged: dict[str, Any], log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    import torch

    source = staged["root"] / "sft"
    hostile = tmp_path / "hostile"
    shutil.copytree(source, hostile)
    torch.save({"weights": Smuggled()}, hostile / "weights.pt")
    out = tmp_path / "out"
    assert main(["evaluate", "--policy", str(hostile), "--data", str(log_file),
                 "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "unpickled!" not in captured.out + captured.err
    assert "weights.pt" in captured.err and not out.exists()
    newer = tmp_path / "newer"
    shutil.copytree(source, newer)
    meta = json.loads((newer / "model.json").read_text())
    meta["version"] += 1
    (newer / "model.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--policy", str(newer), "--data", str(log_file),
                 "--out", str(out)]) == 2
    assert "version" in capsys.readouterr().err and not out.exists()


def test_an_hstu_policy_trains_post_trains_and_is_scored_with_its_timestamps(
        staged: dict[str, Any], log_file: Path, tmp_path: Path) -> None:
    """`--policy-architecture hstu` through `rmdiag train` (SFT, then PPO from it against the
    audit's reward model) and `rmdiag evaluate`: the saved policy is an HSTU one, and its
    evaluation reads the histories' timestamps (scoring it without them gives other figures)."""
    from rmdiag.persist import load_policy

    data = ["--data", str(log_file)]
    hstu = dataclasses.replace(FAST_POLICY, architecture="hstu")
    assert main(["train", "sft", *data, "--out", str(tmp_path / "sft"), "--max-len", str(MAX_LEN),
                 *flags(hstu, policies_fields("sft"), prefix="policy_")]) == 0
    reward_model = str(staged["root"] / "audit" / "reward_model")
    assert main(["train", "ppo", *data, "--out", str(tmp_path / "ppo"), "--reference",
                 str(tmp_path / "sft"), "--reward-model", reward_model,
                 *flags(hstu, policies_fields("ppo"), prefix="policy_")]) == 0
    model, metadata = load_policy(tmp_path / "ppo")
    assert model.config.architecture == "hstu" and metadata["algorithm"] == "ppo"
    assert main(["evaluate", "--policy", str(tmp_path / "ppo"), *data, "--out",
                 str(tmp_path / "eval"), "--reward-model", reward_model,
                 *flags(FAST_POLICY, ("n_resamples", "threads"))]) == 0
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    _, split = split_data(log_file)
    timed = policies.policy_data(split, MAX_LEN, timestamps=True).test
    untimed = policies.policy_data(split, MAX_LEN, timestamps=False).test
    assert timed.context.history_timestamps is not None
    ndcg = policies.score_policy(model, timed, 10)["ndcg@10"]
    assert evaluation["metrics"]["ndcg@10"]["value"] == pytest.approx(float(ndcg.mean()))
    assert math.isfinite(evaluation["metrics"]["judge"]["value"])
    with torch.no_grad():
        assert not torch.allclose(model(timed.context), model(untimed.context))
