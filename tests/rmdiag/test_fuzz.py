"""Hostile input files for every reader (issue 14, point 1): each broken file is refused with
exit 2 naming the file (and the column and row where there is one) and nothing written, or --
where the damage leaves a good file (a cut at a line end, a UTF-8 byte-order mark, mixed line
endings) -- read as the clean bytes say. None exits 1 or prints a traceback.

Readers are called directly; every refusal is then replayed through `rmdiag.cli.main` in
process (exit code, stderr, the absent --out). A few cases run a real `rmdiag` process.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rmdiag.audit import audit_inputs
from rmdiag.audit.external import read_predictions
from rmdiag.cli import main
from rmdiag.data import DataError, Interactions, read_table
from rmdiag.stages.inputs import split_data
from rmdiag.stages.recommendations import read_recommendations
from tests.rmdiag.strategies import (
    PREFIX,
    REFUSED,
    SAME,
    WRONG_COLUMNS,
    Hostile,
    TableCase,
    TextFile,
    hostile_bytes,
    hostile_tables,
    hostile_text,
    log_files,
)

FUZZ = settings.get_profile("fuzz")
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a reader that opens a fifo blocks until a writer comes)."""

    def stop(*_: Any) -> None:
        raise TimeoutError(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_cli_refuses(argv: list[str], path: Path, out: Path) -> str:
    """`rmdiag ARGV` in process exits 2 naming `path`, without a traceback, writing no `out`."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with _deadline(60):
            code = main(argv)
    message = err.getvalue()
    assert code == 2, (argv, message)
    assert str(path) in message and "Traceback" not in message, message
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    return message


def check(case: Hostile, path: Path, read: Callable[[], Any], argv: list[str], out: Path) -> Any:
    """Read the broken file at `path`: a refusal must be a DataError naming the file (and the
    case's column and row) and exit 2 through the CLI; a read is returned for the caller to
    compare (it must not be one that the case says is refused)."""
    event(case.case)
    try:
        with _deadline(60):
            got = read()
    except DataError as error:
        assert case.expect != SAME, (case.case, str(error))
        assert error.source == str(path) and str(path) in str(error), str(error)
        if case.column is not None:
            assert error.column == case.column, (case.case, str(error))
        if case.row is not None:
            assert error.row == case.row, (case.case, str(error))
        assert_cli_refuses(argv, path, out)
        return None
    assert case.expect != REFUSED, (case.case, case.data[:200], got)
    return got


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


# -- interaction logs: CSV/TSV, MovieLens ::, u.data and ratings.csv, RecBole .inter ---------


@settings(FUZZ, max_examples=240)
@given(base=log_files(), command=st.sampled_from(["audit", "run"]), data=st.data())
def test_hostile_text_logs_exit_2_naming_the_file(base: TextFile, command: str,
                                                  data: st.DataObject) -> None:
    case = data.draw(hostile_text(base), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        clean, path, out = Path(tmp) / "clean" / base.name, Path(tmp) / base.name, Path(tmp) / "o"
        clean.parent.mkdir()
        clean.write_bytes(base.render())
        path.write_bytes(case.data)
        expected = _rows(read_table(clean)[0])
        got = check(case, path, lambda: read_table(path)[0], [command, "--data", str(path),
                                                               "--out", str(out)], out)
    if got is None:
        return
    rows = _rows(got)
    if case.expect == SAME:
        assert rows == expected, case.case
    elif case.expect == PREFIX:  # a cut: the rows before the last one read whole
        assert len(rows) <= len(expected) and rows[:-1] == expected[: len(rows) - 1], case.case


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@st.composite
def log_tables(draw: st.DrawFn) -> pa.Table:
    base = draw(log_files("csv"))
    columns = list(zip(*base.rows, strict=True))
    return pa.table({
        "user_id": [int(v) for v in columns[0]],
        "item_id": [int(v) for v in columns[1]],
        "timestamp": [int(v) for v in columns[2]],
        "reward": [float(v) for v in columns[3]],
    })


LOG_KINDS = {"user_id": "id", "item_id": "id", "timestamp": "timestamp", "reward": "number"}


@settings(FUZZ, max_examples=80)
@given(base=log_tables(), data=st.data())
def test_hostile_parquet_logs_exit_2_naming_the_file(base: pa.Table, data: st.DataObject) -> None:
    case = data.draw(st.one_of(hostile_bytes(_parquet_bytes(base)),
                               hostile_tables(base, LOG_KINDS)), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "log.parquet", Path(tmp) / "o"
        if isinstance(case, TableCase):
            pq.write_table(case.table, path)
        else:
            path.write_bytes(case.data)
        check(case, path, lambda: read_table(path)[0], ["audit", "--data", str(path), "--out",
                                                        str(out)], out)


# -- a reward model's predictions and a model's ranked lists, as they land ------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "log.parquet"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["simulate", "--out", str(data), "--users", "12", "--items", "15"]) == 0
    _, heldout = audit_inputs(data)
    log, _ = split_data(data)
    return {"data": data, "heldout": heldout, "log": log}


def predictions_file(heldout: Interactions) -> TextFile:
    users = heldout.decode_users(heldout.users).tolist()
    items = heldout.decode_items(heldout.items).tolist()
    rows = [[str(u), str(i), str(t), f"{0.25 * (n % 17):g}"]
            for n, (u, i, t) in enumerate(zip(users, items, heldout.timestamps.tolist(),
                                              strict=True))]
    names = ["user_id", "item_id", "timestamp", "prediction"]
    return TextFile("pred.csv", ",", names, names, ["id", "id", "timestamp", "number"], rows)


def recommendations_file(log: Interactions) -> TextFile:
    rows = [[str(log.user_ids[u]), str(log.item_ids[i]), str(rank)]
            for u in range(1, log.n_users + 1)
            for rank, i in enumerate(range(1 + u % 3, 1 + u % 3 + 4), 1)]
    names = ["user_id", "item_id", "rank"]
    return TextFile("recs.csv", ",", names, names, ["id", "id", "number"], rows)


def _table(base: TextFile) -> pa.Table:
    columns = list(zip(*base.rows, strict=True))
    return pa.table({
        name: [float(v) if kind == "number" else int(v) for v in values]
        for name, kind, values in zip(base.columns, base.kinds, columns, strict=True)
    })


@settings(FUZZ, max_examples=60)
@given(parquet=st.booleans(), data=st.data())
def test_hostile_prediction_files_exit_2_naming_the_file(world: dict[str, Any], parquet: bool,
                                                         data: st.DataObject) -> None:
    base = predictions_file(world["heldout"])
    kinds = dict(zip(base.columns, base.kinds, strict=True))
    case = data.draw(st.one_of(hostile_bytes(_parquet_bytes(_table(base))),
                               hostile_tables(_table(base), kinds))
                     if parquet else hostile_text(base), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        clean, path, out = Path(tmp) / "clean.csv", Path(tmp) / base.name, Path(tmp) / "o"
        if parquet:
            path = path.with_suffix(".parquet")
        clean.write_bytes(base.render())
        if isinstance(case, TableCase):
            pq.write_table(case.table, path)
        else:
            path.write_bytes(case.data)
        got = check(case, path, lambda: read_predictions(path, world["heldout"]),
                    ["audit", "--data", str(world["data"]), "--predictions", str(path),
                     "--out", str(out)], out)
        if got is not None and case.expect == SAME:
            expected = read_predictions(clean, world["heldout"])
            assert np.array_equal(got[0], expected[0]), case.case


@settings(FUZZ, max_examples=60)
@given(parquet=st.booleans(), data=st.data())
def test_hostile_recommendation_files_exit_2_naming_the_file(
    world: dict[str, Any], parquet: bool, data: st.DataObject
) -> None:
    base = recommendations_file(world["log"])
    kinds = dict(zip(base.columns, base.kinds, strict=True))
    case = data.draw(st.one_of(hostile_bytes(_parquet_bytes(_table(base))),
                               hostile_tables(_table(base), kinds))
                     if parquet else hostile_text(base), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        clean, path, out = Path(tmp) / "clean.csv", Path(tmp) / base.name, Path(tmp) / "o"
        if parquet:
            path = path.with_suffix(".parquet")
        clean.write_bytes(base.render())
        if isinstance(case, TableCase):
            pq.write_table(case.table, path)
        else:
            path.write_bytes(case.data)
        got = check(case, path, lambda: read_recommendations(path, world["log"]),
                    ["evaluate", "--recommendations", str(path), "--data", str(world["data"]),
                     "--out", str(out)], out)
        if got is not None and case.expect == SAME:
            expected = read_recommendations(clean, world["log"])
            assert all(np.array_equal(a, b) for a, b in zip(got[:3], expected[:3], strict=True))


# -- not a file: a directory, a fifo --------------------------------------------------------


@pytest.mark.parametrize("kind", ["a directory", "a named pipe"])
@pytest.mark.parametrize("reader", ["log", "predictions", "recommendations"])
def test_a_directory_or_fifo_is_refused_without_blocking(world: dict[str, Any], tmp_path: Path,
                                                         reader: str, kind: str) -> None:
    path, out = tmp_path / "given.csv", tmp_path / "out"
    if kind == "a directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    read, argv = {
        "log": (lambda: read_table(path), ["audit", "--data", str(path)]),
        "predictions": (lambda: read_predictions(path, world["heldout"]),
                        ["audit", "--data", str(world["data"]), "--predictions", str(path)]),
        "recommendations": (lambda: read_recommendations(path, world["log"]),
                            ["evaluate", "--recommendations", str(path), "--data",
                             str(world["data"])]),
    }[reader]
    with _deadline(30), pytest.raises(DataError, match=f"not a regular file \\({kind}\\)"):
        read()
    assert_cli_refuses([*argv, "--out", str(out)], path, out)


# -- a real process: exit status 2 and no traceback on its stderr ---------------------------


def test_a_real_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    header = b"user_id,item_id,timestamp,reward"
    cases = {  # a file that ended in a traceback and exit 1 (issue 14), and a fifo
        "dup.csv": (header + b",reward\n1,2,3,4,5\n", "column 'reward'"),
        "fifo.csv": (None, "not a regular file (a named pipe)"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, (content, expected) in cases.items():
        path, out = tmp_path / name, tmp_path / f"out-{name}"
        if content is None:
            os.mkfifo(path)
        else:
            path.write_bytes(content)
        result = subprocess.run(
            [sys.executable, "-m", "rmdiag.cli", "audit", "--data", str(path), "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert str(path) in result.stderr and expected in result.stderr, result.stderr
        assert not out.exists()


WRONG = [(name, label) for name, kind in LOG_KINDS.items() for label, *_ in WRONG_COLUMNS[kind]]


@pytest.mark.parametrize(("name", "label"), WRONG, ids=[f"{n}-{k}" for n, k in WRONG])
def test_every_wrong_column_type_in_parquet_is_refused_by_name(tmp_path: Path, name: str,
                                                               label: str) -> None:
    # the fuzz draws these at random; here each one, in each column, once
    base = pa.table({"user_id": [1, 2, 3], "item_id": [4, 5, 6], "timestamp": [7, 8, 9],
                     "reward": [1.0, 2.0, 3.0]})
    _, make, names_row = next(w for w in WRONG_COLUMNS[LOG_KINDS[name]] if w[0] == label)
    path, out = tmp_path / "log.parquet", tmp_path / "out"
    pq.write_table(base.set_column(base.column_names.index(name), name,
                                   make(base.column(name).to_pylist(), 1)), path)
    with pytest.raises(DataError) as error:
        read_table(path)
    assert error.value.column == name and error.value.row == (2 if names_row else None)
    assert_cli_refuses(["audit", "--data", str(path), "--out", str(out)], path, out)
