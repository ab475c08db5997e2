"""Bring your own reward model: predictions from a file or a RewardFn, audited beside ours."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rmdiag.audit import AuditConfig, audit, audit_inputs
from rmdiag.cli import main
from rmdiag.data import DataError, Interactions

FAST = ["--kinds", "lightgbm", "--members", "2", "--lightgbm-rounds", "20", "--resamples",
        "200", "--threads", "1", "--min-count", "40"]
FAST_AUDIT = AuditConfig(kinds="lightgbm", n_members=2, n_resamples=200, lightgbm_rounds=20,
                         threads=1, min_count=40)  # 40: an unexplored slice of ~50 users


def predictions_table(heldout: Interactions, members: np.ndarray) -> pa.Table:
    """One row per (member, held-out event), in the user's raw ids."""
    m, n = members.shape
    return pa.table({
        "user_id": np.tile(heldout.user_ids[heldout.users], m),
        "item_id": np.tile(heldout.item_ids[heldout.items], m),
        "timestamp": np.tile(heldout.timestamps, m),
        "member": np.repeat(np.arange(m), n),
        "prediction": members.reshape(-1),
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("byo")
    data = root / "log.parquet"
    assert main(["simulate", "--out", str(data), "--users", "120", "--items", "60",
                 "--preset", "learnable"]) == 0
    train, heldout = audit_inputs(data)
    result = audit(train, heldout, config=FAST_AUDIT)
    table = predictions_table(heldout, result.member_predictions["ensemble"])
    # an extra prediction for an event that is not held out is ignored and counted
    extra = pa.table({"user_id": table["user_id"][:1], "item_id": table["item_id"][:1],
                      "timestamp": pa.array([-1], pa.int64()), "member": pa.array([0]),
                      "prediction": pa.array([3.0])})
    pred = root / "pred.parquet"
    pq.write_table(pa.concat_tables([table, extra.cast(table.schema)]), pred)
    return {"root": root, "data": data, "pred": pred, "table": table, "train": train,
            "heldout": heldout, "result": result}


def test_exported_ensemble_predictions_reproduce_the_ensemble(world: dict, capsys) -> None:
    out = world["root"] / "audit"
    assert main(["audit", "--data", str(world["data"]), "--predictions", str(world["pred"]),
                 "--predictions-name", "mine", "--out", str(out), *FAST]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["models"]["mine"] == report["models"]["ensemble"]
    for slice_name, metrics in report["models"]["ensemble"].items():
        for metric, fig in metrics.items():
            for key in ("value", "low", "high"):
                if fig[key] is not None:
                    assert report["models"]["mine"][slice_name][metric][key] == pytest.approx(
                        fig[key], abs=1e-9)
    ours = {(c["baseline"], c["slice"], c["metric"]): c
            for c in report["comparisons"] if c["model"] == "ensemble"}
    theirs = {(c["baseline"], c["slice"], c["metric"]): c
              for c in report["comparisons"] if c["model"] == "mine"}
    assert ours.keys() == theirs.keys() and len(ours) == 4 * 2 * 3
    assert report["models"]["mine"]["unexplored"]["rmse"]["value"] is not None
    for key, entry in ours.items():
        for field in ("p_value", "p_adjusted"):
            if entry[field] is not None:
                assert theirs[key][field] == pytest.approx(entry[field], abs=1e-9)
        for part in ("value", "low", "high"):
            if entry["difference"][part] is not None:
                assert theirs[key]["difference"][part] == pytest.approx(
                    entry["difference"][part], abs=1e-9)
    assert report["spread_error"]["mine.all"] == report["spread_error"]["all"]
    assert report["gap"]["mine"]["gap"]["value"] is None and report["gap"]["mine"]["reason"]
    counts = report["data"]["external_predictions"]
    assert counts["matched"] == world["table"].num_rows and counts["ignored"] == 1
    # the verdict is on the external model, and says so
    assert "external model 'mine'" in report["reasons"][0]
    assert report["verdict"] in (
        "generalizes", "directional", "unreliable")
    assert "external model" in capsys.readouterr().out


def test_a_reward_fn_is_audited_with_its_train_gap(world: dict) -> None:
    train, heldout, ensemble = world["train"], world["heldout"], world["result"].ensemble

    class Members:  # an ensemble exposing only .members, as a user's own might
        def members(self, context, items):
            return ensemble.members(context, items)

        def __call__(self, context, items):
            return ensemble(context, items)

    config = FAST_AUDIT
    result = audit(train, heldout, config=config, reward_model={"own": Members()})
    assert np.allclose(result.predictions["own"], result.predictions["ensemble"], atol=1e-6)
    assert result.gap["own"]["train_rmse"].available
    assert "own.all" in result.spread_error


@pytest.mark.parametrize("name", ["ensemble", "bias", "lightgbm"])
def test_names_that_clash_with_built_ins_are_refused(world: dict, name: str) -> None:
    with pytest.raises(ValueError, match="clashes"):
        audit(world["train"], world["heldout"], config=FAST_AUDIT,
              external_predictions={name: np.zeros(len(world["heldout"]))})
    out = world["root"] / f"clash-{name}"
    assert main(["audit", "--data", str(world["data"]), "--predictions", str(world["pred"]),
                 "--predictions-name", name, "--out", str(out), *FAST]) == 2
    assert not out.exists()


def _bad_files(world: dict) -> dict[str, tuple[pa.Table, list[str]]]:
    table: pa.Table = world["table"]
    heldout = world["heldout"]
    nan = table.column("prediction").to_numpy().copy()
    nan[4] = np.nan
    dup = pa.concat_tables([table, table.slice(7, 1)])
    first = (str(heldout.user_ids[heldout.users[0]]), str(heldout.item_ids[heldout.items[0]]),
             str(heldout.timestamps[0]))
    return {
        "missing.parquet": (table.drop_columns(["prediction"]), ["column 'prediction'"]),
        "nan.csv": (table.set_column(4, "prediction", pa.array(nan)),
                    ["column 'prediction'", "row 5", "NaN"]),
        "dup.parquet": (dup, [f"row {table.num_rows + 1}", "second prediction"]),
        "without.parquet": (table.filter(pa.array(
            [not (i % len(heldout) == 0) for i in range(table.num_rows)])),
            ["has no prediction", *(repr(v) for v in first[:2]), first[2]]),
    }


def test_bad_prediction_files_exit_2_naming_where_and_write_nothing(world: dict,
                                                                    capsys) -> None:
    for file_name, (table, expected) in _bad_files(world).items():
        path = world["root"] / file_name
        if file_name.endswith(".csv"):
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        with pytest.raises(DataError) as error:
            from rmdiag.audit.external import read_predictions

            read_predictions(path, world["heldout"])
        out = world["root"] / f"out-{file_name}"
        assert main(["audit", "--data", str(world["data"]), "--predictions", str(path),
                     "--out", str(out), *FAST]) == 2, file_name
        assert not out.exists()
        message = capsys.readouterr().err
        for part in [str(path), *expected]:
            assert part in message and part in str(error.value), (file_name, part, message)


def test_timestamp_is_optional_where_each_pair_is_held_out_once(world: dict) -> None:
    from rmdiag.audit.external import read_predictions

    heldout = world["heldout"]
    one = world["table"].filter(pc.equal(world["table"]["member"], 0))
    table = one.drop_columns(["timestamp", "member"])
    pairs = set(zip(heldout.users.tolist(), heldout.items.tolist(), strict=True))
    if len(pairs) == len(heldout):
        values, info = read_predictions(table, heldout)
        assert values.shape == (1, len(heldout)) and info["ignored"] == 0
        assert np.array_equal(values[0], world["result"].member_predictions["ensemble"][0])
    else:
        with pytest.raises(DataError, match="timestamp"):
            read_predictions(table, heldout)
    # a pair held out twice needs the timestamp
    twice = heldout.take(np.r_[0, 0])
    with pytest.raises(DataError, match="add a timestamp column"):
        read_predictions(table, twice)


RUN_FAST = ["--audit-kinds", "lightgbm", "--audit-members", "2", "--audit-lightgbm-rounds", "20",
            "--audit-resamples", "200", "--audit-threads", "1", "--audit-min-count", "40",
            "--no-sweep", "--max-len", "20", "--policy-hidden", "16", "--policy-blocks", "1",
            "--policy-sft-epochs", "1", "--policy-post-steps", "2", "--policy-resamples", "200",
            "--policy-threads", "1", "--no-policy-progress"]


def test_run_decides_from_the_external_model(world: dict, tmp_path, capsys) -> None:
    from rmdiag.select import SelectConfig, parse_rule

    out = tmp_path / "run"
    assert main(["run", "--data", str(world["data"]), "--predictions", str(world["pred"]),
                 "--predictions-name", "mine", "--out", str(out), *RUN_FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    audit_json = summary["audit"]
    # the same held-out events as `rmdiag audit` (each user's last two), so the same figures
    assert audit_json["models"]["mine"] == audit_json["models"]["ensemble"]
    assert audit_json["data"]["external_predictions"]["name"] == "mine"
    decision = summary["decision"]
    assert decision["verdict"] == audit_json["verdict"]
    # the calibrated rule chose, from the figures it read (recorded as evidence), in its order
    parsed = parse_rule(SelectConfig().rule)
    assert parsed is not None and decision["rule"] == SelectConfig().rule
    branches, otherwise = parsed
    read = {key.removeprefix("selection."): figure["value"]
            for key, figure in decision["evidence"].items() if key.startswith("selection.")}
    assert set(read) == {branch.feature for branch in branches}
    assert decision["algorithm"] == next(
        (branch.algorithm for branch in branches if branch.holds(read)), otherwise)
    assert "external model 'mine'" in decision["reasons"][0]
    assert any(key.endswith(".mine") or ".mine-" in key for key in decision["evidence"])
    # a bad predictions file is refused before any work: exit 2, nothing written
    bad = tmp_path / "bad.parquet"
    pq.write_table(world["table"].drop(["prediction"]), bad)
    refused = tmp_path / "refused"
    assert main(["run", "--data", str(world["data"]), "--predictions", str(bad),
                 "--out", str(refused), *RUN_FAST]) == 2
    assert str(bad) in capsys.readouterr().err and not refused.exists()
    assert main(["run", "--data", str(world["data"]), "--predictions", str(world["pred"]),
                 "--no-audit", "--out", str(refused), *RUN_FAST]) == 2
