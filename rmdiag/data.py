"""Reading interaction logs into one validated, id-encoded table (DESIGN.md, Data contract).

Every reader ends in `load`: it maps column names, validates (refusing bad input before any work,
naming the file, column and first offending row), encodes ids to contiguous ints 1..n (0 is
padding) and orders each user's events by (timestamp, row order). The encoded table keeps the
original row number in `row` so that ties in time stay broken the way the log had them.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CANONICAL_COLUMNS = ("user_id", "item_id", "timestamp", "reward")

# Names that common public logs use for the canonical columns; applied only when the canonical
# name is absent and the caller gave no explicit mapping for it.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("userId", "user", "uid"),
    "item_id": ("movieId", "itemId", "item", "iid"),
    "timestamp": ("time", "ts"),
    "reward": ("rating", "label"),
}

ENCODED_SCHEMA = pa.schema(
    [
        ("user", pa.int64()),
        ("item", pa.int64()),
        ("timestamp", pa.int64()),
        ("reward", pa.float64()),
        ("row", pa.int64()),
    ]
)

_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INTEGER = r"^\s*[-+]?\d+\s*$"
_INT64_MAX = 2**63 - 1
# values a CSV/TSV cell means "missing" by; "nan"/"inf" stay numbers (and are refused as such)
_MISSING = ["", "NA", "N/A", "NULL", "null", "None"]
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class DataError(ValueError):
    """Input that rmdiag refuses; the message names the file, the column and the first bad row."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        where = [part for part in (source, column and f"column '{column}'") if part]
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.detail, self.source, self.column, self.row = message, source, column, row


@dataclass(frozen=True, eq=False)
class Interactions:
    """An encoded interaction log.

    `table` has columns user (1..n_users), item (1..n_items), timestamp (int64), reward (float64)
    and row (the event's row number in the source, 0-based), sorted by user, timestamp, row.
    `user_ids[i]` / `item_ids[i]` is the raw id of encoded id i; index 0 is a padding placeholder.
    """

    table: pa.Table
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = "<table>"
    n_duplicates: int = 0
    _columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> np.ndarray:
        """A column as a (cached, read-only) numpy array."""
        if name not in self._columns:
            values = self.table.column(name).to_numpy()
            values.flags.writeable = False
            self._columns[name] = values
        return self._columns[name]

    @property
    def users(self) -> np.ndarray:
        return self.column("user")

    @property
    def items(self) -> np.ndarray:
        return self.column("item")

    @property
    def timestamps(self) -> np.ndarray:
        return self.column("timestamp")

    @property
    def rewards(self) -> np.ndarray:
        return self.column("reward")

    def with_table(self, table: pa.Table) -> Interactions:
        """The same encoding over other rows (for example one side of a split)."""
        return Interactions(
            table=table,
            n_users=self.n_users,
            n_items=self.n_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            source=self.source,
            n_duplicates=self.n_duplicates,
        )

    def take(self, mask_or_indices: np.ndarray) -> Interactions:
        """The events selected by a boolean mask or by indices, in table order."""
        selector = np.asarray(mask_or_indices)
        indices = np.flatnonzero(selector) if selector.dtype == bool else selector
        return self.with_table(self.table.take(pa.array(indices, type=pa.int64())))

    def concat(self, other: Interactions) -> Interactions:
        """This log and another of the same encoding, re-sorted by (user, timestamp, row)."""
        if other.user_ids is not self.user_ids or other.item_ids is not self.item_ids:
            raise ValueError("can only concatenate logs that share one encoding")
        table = pa.concat_tables([self.table, other.table])
        return self.with_table(_sort_events(table))

    def decode_users(self, users: np.ndarray) -> np.ndarray:
        return self.user_ids[np.asarray(users)]

    def decode_items(self, items: np.ndarray) -> np.ndarray:
        return self.item_ids[np.asarray(items)]

    def summary(self) -> dict[str, Any]:
        """Counts and shapes a person checks first (events, users, items, rewards, lengths)."""
        n = len(self)
        lengths = np.bincount(self.users, minlength=self.n_users + 1)[1:]
        rewards = self.rewards
        values, counts = np.unique(rewards, return_counts=True)
        histogram = (
            {_format_number(v): int(c) for v, c in zip(values, counts, strict=True)}
            if len(values) <= 20
            else None
        )
        return {
            "source": self.source,
            "events": n,
            "users": self.n_users,
            "items": self.n_items,
            "duplicate_rows": self.n_duplicates,
            "density": n / max(1, self.n_users * self.n_items),
            "events_per_user": {
                "min": int(lengths.min()) if n else 0,
                "median": float(np.median(lengths)) if n else 0.0,
                "max": int(lengths.max()) if n else 0,
            },
            "reward": {
                "mean": float(rewards.mean()) if n else None,
                "std": float(rewards.std()) if n else None,
                "min": float(rewards.min()) if n else None,
                "max": float(rewards.max()) if n else None,
                "histogram": histogram,
            },
            "timestamp": {
                "min": int(self.timestamps.min()) if n else None,
                "max": int(self.timestamps.max()) if n else None,
            },
        }


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------------------------
# Reading


def load(
    source: str | os.PathLike[str] | pa.Table | Any,
    columns: Mapping[str, str] | None = None,
) -> Interactions:
    """Read, validate and encode an interaction log.

    source: a path (Parquet, CSV/TSV with a header, MovieLens `ratings.dat` / `u.data` /
    `ratings.csv`, RecBole `.inter`), a pyarrow Table, or a pandas/polars frame.
    columns: maps canonical names (user_id, item_id, timestamp, reward) to the source's names.
    """
    raw, name = read_table(source, columns)
    return encode(raw, source=name)


def read_table(
    source: str | os.PathLike[str] | pa.Table | Any,
    columns: Mapping[str, str] | None = None,
) -> tuple[pa.Table, str]:
    """The validated raw log with canonical columns (ids as given) and the source's name."""
    if isinstance(source, str | os.PathLike):
        name = str(source)
        table = _read_file(Path(source))
    else:
        name = "<table>"
        table = _to_arrow(source)
    return validate(table, name, columns), name


def _to_arrow(frame: Any) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if type(frame).__module__.startswith("pandas"):
        return pa.Table.from_pandas(frame, preserve_index=False)
    if hasattr(frame, "to_arrow"):  # polars and friends
        return frame.to_arrow()
    try:
        return pa.table(frame)
    except (TypeError, ValueError, pa.ArrowInvalid) as error:
        raise DataError(
            f"cannot read an interaction log from a {type(frame).__name__}: {error}"
        ) from error


def _read_file(path: Path) -> pa.Table:
    """The table in a file, any hostile content refused as DataError naming the file (and the
    column and row where there is one): not a regular file, empty, truncated or corrupt, a
    header with an empty or repeated name, text that is not UTF-8 or holds NUL bytes."""
    name = str(path)
    try:
        info = os.stat(path)  # before opening: a fifo would block open() and a read forever
    except FileNotFoundError:
        raise DataError("file not found", source=name) from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise DataError(f"cannot read the file ({_first_line(error)})", source=name) from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((kind for test, kind in _FILE_KINDS if test(info.st_mode)), "not a file")
        raise DataError(f"not a regular file ({kind})", source=name)
    if info.st_size == 0:
        raise DataError("the file is empty", source=name)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            # ParquetFile, not read_table: the dataset reader fails on a repeated column name
            # before the header check below could name it
            with pq.ParquetFile(path) as parquet:
                table = parquet.read()
        elif suffix == ".inter":
            table = _read_recbole_inter(path)
        elif suffix == ".dat":  # MovieLens-1M/10M ratings.dat: user::item::rating::timestamp
            table = _read_delimited(
                path, "::", ["user_id", "item_id", "reward", "timestamp"], header=False
            )
        elif path.name == "u.data" or suffix == ".data":  # MovieLens-100K: tab-separated
            table = _read_delimited(
                path, "\t", ["user_id", "item_id", "reward", "timestamp"], header=False
            )
        elif suffix == ".tsv":
            table = _read_delimited(path, "\t", None, header=True)
        else:
            table = _read_delimited(path, ",", None, header=True)
    except DataError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"unreadable or corrupt file ({_first_line(error)})", source=name
        ) from error
    check_header(table.column_names, name)
    return table


def check_header(names: list[str], source: str) -> None:
    """Refuse a header with an empty name, a NUL byte in a name, or a name given twice (which
    of the two would be the column?)."""
    seen: set[str] = set()
    for position, name in enumerate(names, 1):
        if not name.strip():
            raise DataError(f"column {position} of the header has no name", source=source)
        if "\x00" in name:
            raise DataError(
                f"column {position} of the header has a NUL byte: {name!r}", source=source
            )
        if name in seen:
            raise DataError("the header names this column twice", source=source, column=name)
        seen.add(name)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read_delimited(
    path: Path, delimiter: str, names: list[str] | None, *, header: bool
) -> pa.Table:
    source = str(path)
    data: Any = path
    if len(delimiter) > 1:  # Arrow's CSV reader takes one-byte delimiters only
        data = io.BytesIO(path.read_bytes().replace(delimiter.encode(), b"\t"))
        delimiter = "\t"
    invalid: list[Any] = []

    def refuse(row: Any) -> str:  # a row with too few or too many fields
        invalid.append(row)
        return "error"

    def read() -> pa.Table:
        return pacsv.read_csv(
            data,
            read_options=pacsv.ReadOptions(
                column_names=None if header else names,
                autogenerate_column_names=False,
                use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=refuse),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True, null_values=_MISSING),
        )

    try:
        # One thread: Arrow's threaded CSV reader calling the Python row handler from its pool
        # aborts the interpreter at exit now and then once torch is loaded ("terminate called
        # without an active exception", exit 134 instead of 2: reproduced 6 in 40 runs under
        # load, 0 in 48 single-threaded); it also numbers every bad row.
        table = read()
        table.column_names  # noqa: B018 - decodes the header's names (the only text decoded)
    except UnicodeDecodeError as error:
        raise DataError(
            f"the header is not valid UTF-8 ({error.reason} at byte {error.start})", source=source
        ) from None
    except pa.ArrowInvalid:
        if not invalid:
            raise
        bad = invalid[0]
        # Arrow counts the header and every non-empty line; the table has neither of the first
        row = None if bad.number is None else bad.number - (1 if header else 0)
        raise DataError(
            f"expected {bad.expected_columns} fields, found {bad.actual_columns}: "
            f"{bad.text[:80]!r}",
            source=source,
            row=row,
        ) from None
    if table.num_rows == 0 and table.num_columns == 0:
        raise DataError("the file is empty", source=source)
    _check_text(table, source)
    return table


def _check_text(table: pa.Table, source: str) -> None:
    """Refuse the first cell (lowest row) that is not UTF-8 text (Arrow reads such a column as
    binary) or that holds a NUL byte: a text log has neither."""
    found: list[tuple[int, str, str]] = []
    for name, values in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            for row, value in enumerate(values.to_pylist(), 1):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    found.append((row, name, f"the value {value[:40]!r} is not valid UTF-8"))
                    break
        elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            nul = pc.match_substring(values, "\x00")
            if pc.any(nul).as_py():
                row = int(np.flatnonzero(np.asarray(pc.fill_null(nul, False)))[0]) + 1
                found.append((row, name, f"the value {values[row - 1].as_py()[:40]!r} holds "
                              "a NUL byte"))
    if found:
        row, name, message = min(found)
        raise DataError(message, source=source, column=name, row=row)


def _read_recbole_inter(path: Path) -> pa.Table:
    """RecBole atomic file: tab-separated, header fields `name:type` (token, float, ...)."""
    table = _read_delimited(path, "\t", None, header=True)
    return table.rename_columns([name.split(":", 1)[0] for name in table.column_names])


# --------------------------------------------------------------------------------------------
# Validation


def validate(table: pa.Table, source: str, columns: Mapping[str, str] | None = None) -> pa.Table:
    """Map names and check every column; returns the canonical raw table or raises DataError."""
    check_header(table.column_names, source)
    names = resolve_columns(table.column_names, source, columns)
    if table.num_rows == 0:
        raise DataError("the log has no rows", source=source)
    out = {}
    for canonical in ("user_id", "item_id"):
        out[canonical] = _validate_id(table.column(names[canonical]), source, names[canonical])
    name = names["timestamp"]
    out["timestamp"] = _validate_timestamp(table.column(name), source, name)
    name = names["reward"]
    out["reward"] = _validate_reward(table.column(name), source, name)
    return pa.table(out)


def resolve_columns(
    present: list[str], source: str, columns: Mapping[str, str] | None = None
) -> dict[str, str]:
    """canonical name -> the source's column: the explicit mapping, else the canonical name,
    else a known alias (COLUMN_ALIASES)."""
    columns = columns or {}
    unknown = set(columns) - set(CANONICAL_COLUMNS)
    if unknown:
        raise DataError(
            f"unknown canonical column(s) {sorted(unknown)} in the mapping; "
            f"expected some of {list(CANONICAL_COLUMNS)}",
            source=source,
        )
    chosen = {}
    for canonical in CANONICAL_COLUMNS:
        if canonical in columns:
            name = columns[canonical]
            if name not in present:
                raise DataError(
                    f"mapped column '{name}' (for {canonical}) not found; columns are {present}",
                    source=source,
                    column=name,
                )
        elif canonical in present:
            name = canonical
        else:
            aliases = [alias for alias in COLUMN_ALIASES[canonical] if alias in present]
            if not aliases:
                raise DataError(
                    f"missing column; the file has {present} (map names with --column "
                    f"{canonical}=NAME)",
                    source=source,
                    column=canonical,
                )
            name = aliases[0]
        chosen[canonical] = name
    return chosen


def _refuse_first(
    bad: pa.ChunkedArray | pa.Array,
    values: pa.ChunkedArray,
    message: str,
    source: str,
    column: str,
) -> None:
    """Raise DataError at the first row where `bad` is true; `message` may use {value}."""
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(np.asarray(pc.fill_null(bad, True)))[0]) + 1
        value = values[row - 1].as_py()
        raise DataError(message.format(value=repr(value)), source=source, column=column, row=row)


def _not_integral(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.or_(pc.invert(pc.is_finite(values)), pc.not_equal(pc.floor(values), values))


def _decoded(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary-encoded column (e.g. a pandas categorical in Parquet) as its values."""
    if pa.types.is_dictionary(values.type):
        return values.cast(values.type.value_type)
    return values


def _to_int64(
    values: pa.ChunkedArray, source: str, column: str, what: str, *, exact: bool = False
) -> pa.ChunkedArray:
    """int64 of an integer or an integral float column, refusing the first value beyond int64
    (Arrow reads an integer beyond it from a CSV as a float) and, with `exact` (ids, which must
    be the integer written), a float beyond 2**53, where floats skip integers."""
    kind = values.type
    if pa.types.is_floating(kind):
        values = values.cast(pa.float64())  # float16 has no floor
        _refuse_first(_not_integral(values), values, f"{what} {{value}} is not an integer",
                      source, column)
        magnitude = pc.abs(values)
        _refuse_first(pc.greater_equal(magnitude, 2.0**63), values,
                      f"{what} {{value}} does not fit in int64", source, column)
        if exact:
            _refuse_first(pc.greater(magnitude, 2.0**53), values,
                          f"{what} {{value}} is beyond 2**53, where a float cannot hold every "
                          "integer: write ids as integers or as strings", source, column)
        return values.cast(pa.int64())
    if pa.types.is_unsigned_integer(kind) and kind.bit_width == 64:
        beyond = pc.greater(values, pa.scalar(_INT64_MAX, pa.uint64()))
        _refuse_first(beyond, values, f"{what} {{value}} does not fit in int64", source, column)
    return values.cast(pa.int64())


def _validate_id(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    _refuse_first(pc.is_null(values), values, "missing id", source, column)
    values = _decoded(values)
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _to_int64(values, source, column, "id", exact=True)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return values.cast(pa.string())
    raise DataError(f"ids must be integers or strings, not {kind}", source=source, column=column)


def _validate_timestamp(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    """int64 timestamps: integers as they are; dates and datetimes in seconds, or in their own
    unit where they have parts of a second (so that the order of events is kept)."""
    _refuse_first(pc.is_null(values), values, "missing timestamp", source, column)
    values = _decoded(values)
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _to_int64(values, source, column, "timestamp")
    if pa.types.is_date(kind):
        return values.cast(pa.timestamp("s")).cast(pa.int64())
    if pa.types.is_timestamp(kind):
        try:
            return values.cast(pa.timestamp("s", kind.tz)).cast(pa.int64())
        except pa.ArrowInvalid:  # parts of a second: seconds would lose the order
            return values.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bad = pc.invert(pc.match_substring_regex(values, _INTEGER))
        _refuse_first(bad, values, "timestamp {value} is not an integer", source, column)
        text = pc.replace_substring_regex(pc.utf8_trim_whitespace(values), r"^\+", "")
        try:
            return text.cast(pa.int64())
        except pa.ArrowInvalid:  # digits beyond int64
            beyond = [not -(2**63) <= int(v) <= _INT64_MAX for v in text.to_pylist()]
            _refuse_first(pa.array(beyond), values, "timestamp {value} does not fit in int64",
                          source, column)
            raise
    raise DataError(f"timestamps must be integers, not {kind}", source=source, column=column)


def validate_number(
    values: pa.ChunkedArray, source: str, column: str, what: str, *, booleans: bool = True
) -> pa.ChunkedArray:
    """Finite float64 of a numeric column (or of numbers as text), refusing the first missing,
    non-numeric or non-finite value by name: "missing {what}", "{what} 'x' is not a number"."""
    _refuse_first(pc.is_null(values), values, f"missing {what}", source, column)
    values = _decoded(values)
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bad = pc.invert(pc.match_substring_regex(values, _NUMBER))
        _refuse_first(bad, values, f"{what} {{value}} is not a number", source, column)
        values = pc.utf8_trim_whitespace(values)
    elif not (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or (booleans and pa.types.is_boolean(kind))
    ):
        raise DataError(f"{what}s must be numbers, not {kind}", source=source, column=column)
    as_float = values.cast(pa.float64(), safe=False)  # an integer beyond 2**53 rounds
    bad = pc.invert(pc.is_finite(as_float))
    _refuse_first(bad, as_float, f"{what} {{value}} is NaN or infinite", source, column)
    return as_float


def _validate_reward(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    return validate_number(values, source, column, "reward")


# --------------------------------------------------------------------------------------------
# Encoding


def _encode_ids(values: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(codes 1..n in input order, raw ids with a padding placeholder at index 0)."""
    uniques = pc.unique(values)
    uniques = uniques.take(pc.sort_indices(uniques))
    codes = pc.index_in(values, value_set=uniques).to_numpy().astype(np.int64) + 1
    raw = uniques.to_numpy(zero_copy_only=False)
    placeholder = np.array([None if raw.dtype == object else 0], dtype=raw.dtype)
    return codes, np.concatenate([placeholder, raw])


def _sort_events(table: pa.Table) -> pa.Table:
    """Order by (user, timestamp, row); numpy lexsort is stable and sorts by its last key first."""
    order = np.lexsort(
        (
            table.column("row").to_numpy(),
            table.column("timestamp").to_numpy(),
            table.column("user").to_numpy(),
        )
    )
    return table.take(pa.array(order, type=pa.int64()))


def encode(raw: pa.Table, source: str = "<table>") -> Interactions:
    """Encode a validated raw log: contiguous ids, events ordered per user, duplicates counted."""
    users, user_ids = _encode_ids(raw.column("user_id"))
    items, item_ids = _encode_ids(raw.column("item_id"))
    table = pa.table(
        {
            "user": users,
            "item": items,
            "timestamp": raw.column("timestamp"),
            "reward": raw.column("reward"),
            "row": np.arange(raw.num_rows, dtype=np.int64),
        },
        schema=ENCODED_SCHEMA,
    )
    table = _sort_events(table)
    return Interactions(
        table=table,
        n_users=len(user_ids) - 1,
        n_items=len(item_ids) - 1,
        user_ids=user_ids,
        item_ids=item_ids,
        source=source,
        n_duplicates=_count_exact_duplicates(table),
    )


def _count_exact_duplicates(table: pa.Table) -> int:
    """Rows equal to an earlier row in user, item, timestamp and reward (they are kept)."""
    distinct = table.group_by(["user", "item", "timestamp", "reward"]).aggregate([])
    return table.num_rows - distinct.num_rows


# --------------------------------------------------------------------------------------------
# Writing


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write atomically (temp file + rename), deterministic bytes for equal tables."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
