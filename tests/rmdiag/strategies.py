"""Hypothesis strategies: small interaction logs (ties in time included) and hostile files."""

from __future__ import annotations

import dataclasses
import decimal
from dataclasses import dataclass

import pyarrow as pa
from hypothesis import strategies as st

from rmdiag.data import Interactions, load


@st.composite
def logs(
    draw: st.DrawFn, max_rows: int = 40, max_users: int = 6, max_items: int = 8
) -> Interactions:
    n = draw(st.integers(1, max_rows))
    users = draw(st.lists(st.integers(1, max_users), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(1, max_items), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # few values: many ties
    rewards = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    return load(
        pa.table(
            {
                "user_id": users,
                "item_id": items,
                "timestamp": times,
                "reward": [float(r) for r in rewards],
            }
        )
    )


# --------------------------------------------------------------------------------------------
# Hostile files (tests/rmdiag/test_fuzz.py): a small good file, then one thing broken in it.

# what each broken file must do: "refused" raise DataError (naming the column and row when the
# case says), "same" read as the clean file does (a UTF-8 byte-order mark, mixed line endings),
# "prefix" be refused or read as a prefix of the clean rows (a cut at a line end leaves a good
# file), "either" be refused or read (flipped bytes inside compressed Parquet pages)
REFUSED, SAME, PREFIX, EITHER = "refused", "same", "prefix", "either"
CANONICAL = ["user_id", "item_id", "timestamp", "reward"]
ORDER_ML = ["user_id", "item_id", "reward", "timestamp"]  # MovieLens field order
ML_NAMES = ORDER_ML  # a headerless MovieLens file's fields get the canonical names

BAD_TOKENS = {  # values that no column of their kind may hold
    "id": ["", "NULL", "1.5", "nan", "inf", "-1e300", "2e17"],
    "timestamp": ["", "N/A", "yesterday", "1.5", "nan", "2020-13-45", "0x10", "1e400"],
    "number": ["", "None", "great", "nan", "-inf", "1e400", "4..5", "0x1", "--1"],
}
NOT_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]


@dataclass(frozen=True)
class TextFile:
    """A delimited file as fields: `columns` are the names the reader gives each field (a
    RecBole header `rating:float` is read as `rating`), `kinds` what each field must hold."""

    name: str
    delimiter: str
    header: list[str] | None
    columns: list[str]
    kinds: list[str]
    rows: list[list[str]]

    def render(self, newline: str = "\n") -> bytes:
        lines = ([self.header] if self.header is not None else []) + self.rows
        return "".join(self.delimiter.join(line) + newline for line in lines).encode()


@dataclass(frozen=True)
class Hostile:
    """A broken file's bytes and what reading it must do (`expect`, above)."""

    case: str
    data: bytes
    expect: str
    column: str | None = None
    row: int | None = None


# name: (file name, delimiter, header as written or None, names the reader gives, field order)
LOG_FORMATS: dict[str, tuple[str, str, list[str] | None, list[str], list[str]]] = {
    "csv": ("log.csv", ",", CANONICAL, CANONICAL, CANONICAL),
    "tsv": ("log.tsv", "\t", CANONICAL, CANONICAL, CANONICAL),
    "ratings.csv": ("ratings.csv", ",", ["userId", "movieId", "rating", "timestamp"],
                    ["userId", "movieId", "rating", "timestamp"], ORDER_ML),
    "ratings.dat": ("ratings.dat", "::", None, ML_NAMES, ORDER_ML),
    "u.data": ("u.data", "\t", None, ML_NAMES, ORDER_ML),
    "inter": ("x.inter", "\t", ["user_id:token", "item_id:token", "rating:float",
                                "timestamp:float"], ["user_id", "item_id", "rating", "timestamp"],
              ORDER_ML),
}


@st.composite
def log_files(draw: st.DrawFn, fmt: str | None = None) -> TextFile:
    """A small good interaction log in one of the text formats the readers take."""
    fmt = fmt or draw(st.sampled_from(sorted(LOG_FORMATS)))
    name, delimiter, header, columns, order = LOG_FORMATS[fmt]
    n = draw(st.integers(1, 8))
    fields = {
        "user_id": st.integers(1, 4).map(str),
        "item_id": st.integers(1, 9).map(str),
        "timestamp": st.integers(0, 2_000_000_000).map(str),
        "reward": st.sampled_from(["1", "2", "3.5", "4", "5", "0.25"]),
    }
    rows = [[draw(fields[field]) for field in order] for _ in range(n)]
    kinds = [{"user_id": "id", "item_id": "id", "timestamp": "timestamp"}.get(f, "number")
             for f in order]
    return TextFile(name, delimiter, header, columns, kinds, rows)


@st.composite
def hostile_text(draw: st.DrawFn, base: TextFile) -> Hostile:
    """`base` with one thing broken: cut at any byte, a repeated or empty header name, a value
    of the wrong type, a value beyond int64, a byte-order mark, UTF-16, a NUL byte, bytes that
    are not UTF-8, mixed line endings."""
    clean = base.render()
    cases = ["truncate", "wrong type", "beyond int64", "utf-8 bom", "utf-16", "nul",
             "not utf-8", "line endings"]
    if base.header is not None:
        cases += ["repeated name", "empty name", "no header line"]
    case = draw(st.sampled_from(cases))
    row = draw(st.integers(0, len(base.rows) - 1))
    if case == "truncate":
        return Hostile(case, clean[: draw(st.integers(0, len(clean) - 1))], PREFIX)
    if case == "line endings":
        newlines = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(clean),
                                 max_size=len(clean)))
        text = clean.decode().split("\n")
        mixed = "".join(line + newlines[i] for i, line in enumerate(text[:-1]))
        return Hostile(case, mixed.encode(), SAME)
    if case == "utf-8 bom":
        return Hostile(case, b"\xef\xbb\xbf" + clean, SAME)
    if case == "utf-16":
        return Hostile(case, b"\xff\xfe" + clean.decode().encode("utf-16-le"), REFUSED)
    if case in ("nul", "not utf-8"):
        bad = b"\x00" if case == "nul" else draw(st.sampled_from(NOT_UTF8))
        at = draw(st.integers(0, len(clean)))
        if draw(st.booleans()) and at < len(clean):  # replace a byte instead of inserting
            return Hostile(case, clean[:at] + bad + clean[at + 1:], REFUSED)
        return Hostile(case, clean[:at] + bad + clean[at:], REFUSED)
    if case in ("wrong type", "beyond int64"):
        if case == "wrong type":
            field = draw(st.integers(0, len(base.columns) - 1))
            value = draw(st.sampled_from(BAD_TOKENS[base.kinds[field]]))
        else:
            field = draw(st.sampled_from([i for i, k in enumerate(base.kinds)
                                          if k in ("id", "timestamp")]))
            value = str(draw(st.one_of(st.integers(2**63, 10**30),
                                       st.integers(-(10**30), -(2**63) - 1))))
        rows = [list(r) for r in base.rows]
        rows[row][field] = value
        broken = dataclasses.replace(base, rows=rows)
        return Hostile(case, broken.render(), REFUSED, base.columns[field], row + 1)
    assert base.header is not None
    field = draw(st.integers(0, len(base.header) - 1))
    if case == "repeated name":
        header = [*base.header, base.header[field]]
        rows = [[*r, r[field]] for r in base.rows]
        broken = dataclasses.replace(base, header=header, rows=rows)
        return Hostile(case, broken.render(), REFUSED, base.columns[field])
    if case == "empty name":
        header = list(base.header)
        header[field] = draw(st.sampled_from(["", " ", "\t" if base.delimiter == "," else " "]))
        return Hostile(case, dataclasses.replace(base, header=header).render(), REFUSED)
    # no header line: the first row is taken for the header (or the file has none left)
    return Hostile(case, dataclasses.replace(base, header=[""]).render(), REFUSED)


@st.composite
def hostile_bytes(draw: st.DrawFn, clean: bytes) -> Hostile:
    """A binary file (Parquet) broken at the byte level: cut at any byte (refused: the footer
    is gone), or a byte-order mark, a NUL byte or bytes that are not UTF-8 written into it
    (refused or, where they land inside a page that still decodes, read)."""
    case = draw(st.sampled_from(["truncate", "utf-8 bom", "nul", "not utf-8"]))
    if case == "truncate":
        return Hostile(case, clean[: draw(st.integers(0, len(clean) - 1))], REFUSED)
    if case == "utf-8 bom":
        return Hostile(case, b"\xef\xbb\xbf" + clean, EITHER)
    bad = b"\x00" if case == "nul" else draw(st.sampled_from(NOT_UTF8))
    at = draw(st.integers(0, len(clean) - 1))
    return Hostile(case, clean[:at] + bad + clean[at + 1:], EITHER)


def _with(values: list, row: int, value: object) -> list:
    return [value if i == row else v for i, v in enumerate(values)]


# kind: (case, the column made from the clean values and a row, whether the row is named)
WRONG_COLUMNS = {
    "id": [
        ("bool", lambda v, r: pa.array([x % 2 == 0 for x in v]), False),
        ("list", lambda v, r: pa.array([[x] for x in v]), False),
        ("binary", lambda v, r: pa.array([str(x).encode() for x in v], pa.binary()), False),
        ("decimal", lambda v, r: pa.array([decimal.Decimal(x) for x in v]), False),
        ("fraction", lambda v, r: pa.array(_with([float(x) for x in v], r, 1.5)), True),
        ("null", lambda v, r: pa.array(_with(v, r, None), pa.int64()), True),
        ("uint64", lambda v, r: pa.array(_with(v, r, 2**64 - 1), pa.uint64()), True),
        ("float beyond int64", lambda v, r: pa.array(_with([float(x) for x in v], r, 1e19)),
         True),
        ("float beyond 2**53", lambda v, r: pa.array(_with([float(x) for x in v], r, 2.0**60)),
         True),
    ],
    "timestamp": [
        ("bool", lambda v, r: pa.array([x % 2 == 0 for x in v]), False),
        ("duration", lambda v, r: pa.array(v, pa.duration("s")), False),
        ("text", lambda v, r: pa.array(_with([str(x) for x in v], r, "yesterday")), True),
        ("fraction", lambda v, r: pa.array(_with([float(x) for x in v], r, 0.5)), True),
        ("null", lambda v, r: pa.array(_with(v, r, None), pa.int64()), True),
        ("uint64", lambda v, r: pa.array(_with(v, r, 2**63), pa.uint64()), True),
    ],
    "number": [
        ("list", lambda v, r: pa.array([[x] for x in v]), False),
        ("decimal", lambda v, r: pa.array([decimal.Decimal(str(x)) for x in v]), False),
        ("text", lambda v, r: pa.array(_with([str(x) for x in v], r, "great")), True),
        ("nan", lambda v, r: pa.array(_with(v, r, float("nan")), pa.float64()), True),
        ("inf", lambda v, r: pa.array(_with(v, r, float("-inf")), pa.float64()), True),
        ("null", lambda v, r: pa.array(_with(v, r, None), pa.float64()), True),
    ],
}


@st.composite
def hostile_tables(draw: st.DrawFn, base: pa.Table, kinds: dict[str, str]) -> Hostile:
    """`base` (to be written as Parquet) with a repeated or an empty column name, or one
    column of a type, or with a value, that its kind (`kinds`: name -> id, timestamp or
    number) cannot hold. `Hostile.data` is empty: the caller writes the table in `.table`."""
    case = draw(st.sampled_from(["repeated name", "empty name", "wrong type"]))
    name = draw(st.sampled_from(sorted(kinds)))
    index = base.column_names.index(name)
    if case == "repeated name":
        table = base.append_column(name, base.column(name))
        return TableCase(case, b"", REFUSED, name, table=table)
    if case == "empty name":
        names = list(base.column_names)
        names[index] = draw(st.sampled_from(["", " "]))
        return TableCase(case, b"", REFUSED, table=base.rename_columns(names))
    row = draw(st.integers(0, base.num_rows - 1))
    label, make, names_row = draw(st.sampled_from(WRONG_COLUMNS[kinds[name]]))
    column = make(base.column(name).to_pylist(), row)
    return TableCase(f"{case}: {label}", b"", REFUSED, name, row + 1 if names_row else None,
                     table=base.set_column(index, name, column))


@dataclass(frozen=True)
class TableCase(Hostile):
    table: pa.Table | None = None
