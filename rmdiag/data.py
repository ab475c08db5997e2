"""Reading interaction logs into one validated, id-encoded table (DESIGN.md, Data contract).

Every reader ends in `load`: it maps column names, validates (refusing bad input before any work,
naming the file, column and first offending row), encodes ids to contiguous ints 1..n (0 is
padding) and orders each user's events by (timestamp, row order). The encoded table keeps the
original row number in `row` so that ties in time stay broken the way the log had them.
"""

from __future__ import annotations

import io
import os
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
    name = str(path)
    if not path.exists():
        raise DataError("file not found", source=name)
    if not path.is_file():
        raise DataError("not a regular file", source=name)
    if path.stat().st_size == 0:
        raise DataError("the file is empty", source=name)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix == ".inter":
            return _read_recbole_inter(path)
        if suffix == ".dat":  # MovieLens-1M/10M ratings.dat: user::item::rating::timestamp
            return _read_delimited(
                path, "::", ["user_id", "item_id", "reward", "timestamp"], header=False
            )
        if path.name == "u.data" or suffix == ".data":  # MovieLens-100K: tab-separated, no header
            return _read_delimited(
                path, "\t", ["user_id", "item_id", "reward", "timestamp"], header=False
            )
        if suffix == ".tsv":
            return _read_delimited(path, "\t", None, header=True)
        return _read_delimited(path, ",", None, header=True)
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"unreadable or corrupt file ({_first_line(error)})", source=name
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read_delimited(
    path: Path, delimiter: str, names: list[str] | None, *, header: bool
) -> pa.Table:
    data: Any = path
    if len(delimiter) > 1:  # Arrow's CSV reader takes one-byte delimiters only
        data = io.BytesIO(path.read_bytes().replace(delimiter.encode(), b"\t"))
        delimiter = "\t"
    read_options = pacsv.ReadOptions(
        column_names=None if header else names, autogenerate_column_names=False
    )
    table = pacsv.read_csv(
        data,
        read_options=read_options,
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        # "nan"/"inf" stay numbers (and are refused as such, by name); only these mean "missing"
        convert_options=pacsv.ConvertOptions(
            strings_can_be_null=True, null_values=["", "NA", "N/A", "NULL", "null", "None"]
        ),
    )
    if table.num_rows == 0 and table.num_columns == 0:
        raise DataError("the file is empty", source=str(path))
    return table


def _read_recbole_inter(path: Path) -> pa.Table:
    """RecBole atomic file: tab-separated, header fields `name:type` (token, float, ...)."""
    table = _read_delimited(path, "\t", None, header=True)
    return table.rename_columns([name.split(":", 1)[0] for name in table.column_names])


# --------------------------------------------------------------------------------------------
# Validation


def validate(table: pa.Table, source: str, columns: Mapping[str, str] | None = None) -> pa.Table:
    """Map names and check every column; returns the canonical raw table or raises DataError."""
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


def _validate_id(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    _refuse_first(pc.is_null(values), values, "missing id", source, column)
    kind = values.type
    if pa.types.is_integer(kind):
        return values.cast(pa.int64())
    if pa.types.is_floating(kind):
        _refuse_first(_not_integral(values), values, "id {value} is not an integer", source, column)
        return values.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return values.cast(pa.string())
    raise DataError(f"ids must be integers or strings, not {kind}", source=source, column=column)


def _validate_timestamp(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    _refuse_first(pc.is_null(values), values, "missing timestamp", source, column)
    kind = values.type
    if pa.types.is_integer(kind):
        return values.cast(pa.int64())
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return values.cast(pa.timestamp("s")).cast(pa.int64())
    if pa.types.is_floating(kind):
        message = "timestamp {value} is not a finite integer"
        _refuse_first(_not_integral(values), values, message, source, column)
        return values.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bad = pc.invert(pc.match_substring_regex(values, r"^\s*[-+]?\d+\s*$"))
        _refuse_first(bad, values, "timestamp {value} is not an integer", source, column)
        return pc.utf8_trim_whitespace(values).cast(pa.int64())
    raise DataError(f"timestamps must be integers, not {kind}", source=source, column=column)


def _validate_reward(values: pa.ChunkedArray, source: str, column: str) -> pa.ChunkedArray:
    _refuse_first(pc.is_null(values), values, "missing reward", source, column)
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bad = pc.invert(pc.match_substring_regex(values, _NUMBER))
        _refuse_first(bad, values, "reward {value} is not a number", source, column)
        values = pc.utf8_trim_whitespace(values)
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(f"rewards must be numbers, not {kind}", source=source, column=column)
    as_float = values.cast(pa.float64())
    bad = pc.invert(pc.is_finite(as_float))
    _refuse_first(bad, as_float, "reward {value} is NaN or infinite", source, column)
    return as_float


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
