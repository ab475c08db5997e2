from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmdiag.data import DataError, Interactions, load

ROWS = [  # user, item, rating, timestamp: user 7 has two events sharing a timestamp
    (7, 10, 4, 100),
    (3, 11, 2, 50),
    (7, 12, 5, 100),
    (3, 10, 1, 40),
    (7, 11, 3, 90),
]


def _canonical(log: Interactions) -> list[tuple]:
    """Decoded rows in the log's order: raw user, raw item, timestamp, reward."""
    return list(
        zip(
            log.decode_users(log.users).tolist(),
            log.decode_items(log.items).tolist(),
            log.timestamps.tolist(),
            log.rewards.tolist(),
            strict=True,
        )
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    paths["u.data"] = tmp_path / "u.data"
    paths["u.data"].write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    paths["dat"] = tmp_path / "ratings.dat"
    paths["dat"].write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    paths["ratings.csv"] = tmp_path / "ratings.csv"
    paths["ratings.csv"].write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS)
    )
    paths["inter"] = tmp_path / "x.inter"
    paths["inter"].write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS)
    )
    table = pa.table(
        {
            "user_id": [r[0] for r in ROWS],
            "item_id": [r[1] for r in ROWS],
            "timestamp": [r[3] for r in ROWS],
            "reward": [float(r[2]) for r in ROWS],
        }
    )
    paths["parquet"] = tmp_path / "log.parquet"
    pq.write_table(table, paths["parquet"])
    return paths


def test_every_format_loads_to_the_same_log(files: dict[str, Path]) -> None:
    logs = {name: load(path) for name, path in files.items()}
    frame = pd.read_parquet(files["parquet"])
    logs["pandas"] = load(frame)
    logs["arrow"] = load(pq.read_table(files["parquet"]))
    expected = _canonical(logs["parquet"])
    # ordered by user then timestamp; the tie at t=100 keeps the file's row order
    assert expected == [
        (3, 10, 40, 1.0),
        (3, 11, 50, 2.0),
        (7, 11, 90, 3.0),
        (7, 10, 100, 4.0),
        (7, 12, 100, 5.0),
    ]
    for name, log in logs.items():
        assert _canonical(log) == expected, name
        assert (log.n_users, log.n_items) == (2, 3)
        assert log.table.column("user").to_pylist() == [1, 1, 2, 2, 2]


def test_column_mapping_and_duplicates_are_kept_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who,what,when,score,extra\na,x,1,0.5,z\na,x,1,0.5,z\nb,y,2,1.5,z\n")
    log = load(path, {"user_id": "who", "item_id": "what", "timestamp": "when", "reward": "score"})
    assert len(log) == 3 and log.n_duplicates == 1
    assert log.summary()["duplicate_rows"] == 1
    assert log.decode_users(log.users).tolist() == ["a", "a", "b"]


BAD_INPUTS = {
    # name: (file name, content, expected message parts)
    "missing column": (
        "a.csv",
        "user_id,item_id,timestamp\n1,2,3\n",
        ["a.csv", "'reward'", "missing"],
    ),
    "non-numeric reward": (
        "b.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,4\n1,3,4,great\n",
        ["b.csv", "'reward'", "row 2", "'great'", "not a number"],
    ),
    "NaN reward": (
        "c.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,4\n1,3,4,4\n2,3,4,nan\n",
        ["c.csv", "'reward'", "row 3", "NaN or infinite"],
    ),
    "infinite reward": (
        "d.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,inf\n",
        ["d.csv", "'reward'", "row 1", "NaN or infinite"],
    ),
    "null user id": (
        "e.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,4\n,3,4,4\n",
        ["e.csv", "'user_id'", "row 2", "missing id"],
    ),
    "null item id": (
        "f.tsv",
        "user_id\titem_id\ttimestamp\treward\n1\t2\t3\t4\n1\t3\t4\t4\n1\t\t5\t4\n",
        ["f.tsv", "'item_id'", "row 3", "missing id"],
    ),
    "empty input": ("g.csv", "user_id,item_id,timestamp,reward\n", ["g.csv", "no rows"]),
    "empty file": ("h.csv", "", ["h.csv", "empty"]),
    "corrupt parquet": ("i.parquet", "PAR1 this is not parquet", ["i.parquet", "corrupt"]),
    "bad timestamp": (
        "j.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,4\n1,2,yesterday,4\n",
        ["j.csv", "'timestamp'", "row 2", "'yesterday'"],
    ),
    "duplicated column": (
        "k.csv",
        "user_id,item_id,timestamp,reward,reward\n1,2,3,4,5\n",
        ["k.csv", "'reward'", "twice"],
    ),
    "20-digit timestamp": (
        "l.csv",
        "user_id,item_id,timestamp,reward\n1,2,3,4\n1,2,12345678901234567890,4\n",
        ["l.csv", "'timestamp'", "row 2", "int64"],
    ),
    "id over int64": (
        "m.tsv",
        "user_id\titem_id\ttimestamp\treward\n1\t9223372036854775808\t3\t4\n",
        ["m.tsv", "'item_id'", "row 1", "int64"],
    ),
    "short row": ("o.dat", "1::2::3::4\n1::2::3\n", ["o.dat", "row 2", "found 3"]),
    "empty header name": ("p.csv", "user_id,,timestamp,reward\n1,2,3,4\n", ["column 2", "no name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_file_column_row(case: str, tmp_path: Path) -> None:
    from rmdiag.cli import main

    name, content, parts = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as error:
        load(path)
    for part in parts:
        assert part in str(error.value), (case, str(error.value))
    out = tmp_path / "out"
    assert main(["run", "--data", str(path), "--out", str(out)]) == 2
    assert not out.exists()


def test_text_that_is_odd_but_valid_loads(tmp_path: Path) -> None:
    # a UTF-8 byte-order mark, CR/CRLF/LF line endings, a signed and a padded timestamp, an
    # integer reward beyond 2**53 (whose safe cast to float used to raise ArrowInvalid)
    path = tmp_path / "odd.csv"
    path.write_bytes(
        b"\xef\xbb\xbfuser_id,item_id,timestamp,reward\r\n1,2, +5,4\r1,3,7 ,4\n"
        b"2,3,-1,12345678901234567\n"
    )
    log = load(path)
    assert _canonical(log) == [(1, 2, 5, 4.0), (1, 3, 7, 4.0), (2, 3, -1, 1.2345678901234568e16)]


def test_missing_file_and_misnamed_mapping_exit_2_without_output(tmp_path: Path, capsys) -> None:
    from rmdiag.cli import main

    out = tmp_path / "out"
    assert main(["run", "--data", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "nope.csv" in capsys.readouterr().err and not out.exists()
    path = tmp_path / "ok.csv"
    path.write_text("user_id,item_id,timestamp,reward\n1,2,3,4\n")
    assert main(["run", "--data", str(path), "--column", "reward=score", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'score'" in err and "ok.csv" in err and not out.exists()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.integers(-5, 5), st.text("abc", min_size=1, max_size=2)),
            st.integers(0, 6),
            st.integers(0, 3),
            st.floats(-2, 2, allow_nan=False),
        ),
        min_size=1,
        max_size=30,
    ),
    string_users=st.booleans(),
)
def test_encoding_round_trips(rows: list[tuple], string_users: bool) -> None:
    users = [
        str(u) if string_users else (sum(map(ord, u)) if isinstance(u, str) else u)
        for u, *_ in rows
    ]
    table = pa.table(
        {
            "user_id": users,
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "reward": [r[3] for r in rows],
        }
    )
    log = load(table)
    assert log.users.min() >= 1 and log.users.max() == log.n_users == len(set(users))
    assert log.items.min() >= 1 and log.items.max() == log.n_items
    decoded = sorted(
        zip(
            log.decode_users(log.users).tolist(),
            log.decode_items(log.items).tolist(),
            log.timestamps.tolist(),
            log.rewards.tolist(),
            strict=True,
        )
    )
    original = sorted(
        zip(users, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], strict=True)
    )
    assert decoded == original
    # the row column maps back to the source row
    rows_back = log.column("row")
    assert [users[i] for i in rows_back] == log.decode_users(log.users).tolist()
