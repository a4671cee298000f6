"""Instacart-format purchase data: the six files' schema, and validation of a directory holding them.

The public "Instacart Online Grocery Shopping Dataset 2017" may not be redistributed, so users point kuberec at
their own download; `kuberec data instacart-synth` writes files of the same format from a generative model
(`kuberec.datasets.instacart_synth`, docs/instacart-synth.md). Files and columns, exactly as in the public release
(comma-separated, header line first, RFC 4180 quoting):

- orders.csv: order_id (int), user_id (int), eval_set (prior | train | test), order_number (int, from 1),
  order_dow (0-6), order_hour_of_day (0-23), days_since_prior_order (float, empty for a user's first order)
- order_products__prior.csv, order_products__train.csv: order_id (int), product_id (int),
  add_to_cart_order (int, from 1), reordered (0 | 1)
- products.csv: product_id (int), product_name (str), aisle_id (int), department_id (int)
- aisles.csv: aisle_id (int), aisle (str)
- departments.csv: department_id (int), department (str)

`validate_instacart(source)` checks a directory before anything is ingested: every file and column is present,
every value has its type and range, keys are unique, every id refers to a row that exists (order lines to orders of
the matching eval_set, lines to products, products to aisles and departments), and each user has at most one final
(train/test) order, which is their last. The first problem raises `InstacartDataError` naming the file, the data
row (1-based, header excluded) and the column. Files are streamed in blocks with pyarrow; only the id columns are
kept in memory (about 1 GB for the full dataset's 32M order lines, estimated from the array sizes).
"""

from __future__ import annotations

import csv as stdlib_csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from kuberec.errors import DataError

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
EVAL_SETS = ("prior", "train", "test")  # eval_set codes are indexes into this tuple


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int" | "float" | "str"
    nullable: bool = False  # only days_since_prior_order: empty for a user's first order
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()  # the allowed values of a categorical str column


@dataclass(frozen=True)
class CsvFile:
    name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def spark_schema(self):
        """The file's columns as Spark types: int -> INT, float -> DOUBLE, str -> STRING."""
        from pyspark.sql import types as T

        types = {"int": T.IntegerType(), "float": T.DoubleType(), "str": T.StringType()}
        return T.StructType([T.StructField(c.name, types[c.kind], c.nullable) for c in self.columns])


def _id(name: str) -> Column:
    return Column(name, "int", min=0, max=INT32_MAX)


ORDERS = CsvFile("orders.csv", (
    _id("order_id"), _id("user_id"), Column("eval_set", "str", values=EVAL_SETS),
    Column("order_number", "int", min=1, max=INT32_MAX), Column("order_dow", "int", min=0, max=6),
    Column("order_hour_of_day", "int", min=0, max=23),
    Column("days_since_prior_order", "float", nullable=True, min=0),
))
_ORDER_LINE_COLUMNS = (_id("order_id"), _id("product_id"), Column("add_to_cart_order", "int", min=1, max=INT32_MAX),
                       Column("reordered", "int", min=0, max=1))
ORDER_PRODUCTS_PRIOR = CsvFile("order_products__prior.csv", _ORDER_LINE_COLUMNS)
ORDER_PRODUCTS_TRAIN = CsvFile("order_products__train.csv", _ORDER_LINE_COLUMNS)
PRODUCTS = CsvFile("products.csv", (_id("product_id"), Column("product_name", "str"), _id("aisle_id"),
                                    _id("department_id")))
AISLES = CsvFile("aisles.csv", (_id("aisle_id"), Column("aisle", "str")))
DEPARTMENTS = CsvFile("departments.csv", (_id("department_id"), Column("department", "str")))
FILES: tuple[CsvFile, ...] = (ORDERS, ORDER_PRODUCTS_PRIOR, ORDER_PRODUCTS_TRAIN, PRODUCTS, AISLES, DEPARTMENTS)

_INT_PATTERN = r"^-?[0-9]{1,18}$"
_FLOAT_PATTERN = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
_BLOCK_BYTES = 16 << 20


class InstacartDataError(DataError):
    """An Instacart file is missing or has a bad value; `file`, `row` (1-based data row) and `column` say where."""

    def __init__(self, message: str, file: str, row: int | None = None, column: str | None = None):
        super().__init__(message)
        self.file, self.row, self.column = file, row, column


def _fail(spec: CsvFile, row: int | None, column: str | None, problem: str) -> InstacartDataError:
    where = spec.name
    if row is not None:
        where += f" row {row} (line {row + 1})"  # rows are 1-based after the header line
    if column is not None:
        where += f", column {column}"
    return InstacartDataError(f"{where}: {problem}; nothing was ingested - fix the file and run again",
                              spec.name, row, column)


@dataclass
class InstacartSummary:
    """What a valid directory holds."""

    source: str
    rows: dict[str, int] = field(default_factory=dict)  # file name -> data rows
    users: int = 0
    orders_by_eval_set: dict[str, int] = field(default_factory=dict)


def missing_files(source: str | Path) -> list[str]:
    return [spec.name for spec in FILES if not (Path(source) / spec.name).is_file()]


def read_header(path: Path) -> list[str]:
    """Column names from the file's first line ([] for an empty file)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        return next(stdlib_csv.reader([handle.readline()]), [])


def read_blocks(path: Path, spec: CsvFile,
                keep: tuple[str, ...]) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Stream `path` in blocks, checking every value of every column of `spec`.

    Yields (rows before this block, rows in it, {column: values}) for the columns in `keep`: int64 for int
    columns, float64 (NaN for empty) for float columns, int8 codes into `Column.values` for categorical ones.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    header = read_header(path)
    absent = [name for name in spec.column_names if name not in header]
    if absent:
        found = ",".join(header) or "nothing"
        raise _fail(spec, None, absent[0], f"missing column(s) {', '.join(absent)} in the header line "
                                           f"(expected {','.join(spec.column_names)}; found {found})")
    invalid: list = []

    def on_invalid_row(row) -> str:
        invalid.append(row)
        return "skip"

    seen = 0
    try:
        batches = iter(csv.open_csv(
            path,
            read_options=csv.ReadOptions(block_size=_BLOCK_BYTES, use_threads=False),
            parse_options=csv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in spec.column_names},
                                               include_columns=list(spec.column_names), strings_can_be_null=False),
        ))
    except pa.ArrowInvalid as err:
        raise _fail(spec, None, None, f"not a readable CSV file ({err})") from err
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            batch = None
        except pa.ArrowInvalid as err:  # e.g. bytes that are not UTF-8
            raise _fail(spec, None, None, f"unreadable after data row {seen} ({err})") from err
        if invalid:  # rows are numbered correctly up to here: every earlier block had none skipped
            bad = invalid[0]
            line = bad.number if bad.number is not None else seen + 2
            raise _fail(spec, line - 1, None, f"expected {bad.expected_columns} fields, found "
                                              f"{bad.actual_columns}: {bad.text[:80]!r}")
        if batch is None:
            return
        out: dict[str, np.ndarray] = {}
        for column in spec.columns:
            converted = _check_column(spec, column, batch.column(column.name), seen, pc, pa)
            if column.name in keep:
                out[column.name] = converted
        yield seen, batch.num_rows, out
        seen += batch.num_rows


def _first_false(mask) -> int:
    import pyarrow.compute as pc

    return pc.index(mask, False).as_py()


def _check_column(spec: CsvFile, column: Column, values, seen: int, pc, pa) -> np.ndarray | None:
    """Check one block of one column (strings); return it converted, or None for free-text columns."""
    if column.kind == "str":
        if column.values:
            codes = pc.index_in(values, value_set=pa.array(column.values))
            bad = _first_false(pc.is_valid(codes))
            if bad >= 0:
                raise _fail(spec, seen + bad + 1, column.name,
                            f"{values[bad].as_py()!r} is not one of {', '.join(column.values)}")
            return codes.to_numpy(zero_copy_only=False).astype(np.int8)
        bad = _first_false(pc.not_equal(pc.utf8_length(values), 0))
        if bad >= 0:
            raise _fail(spec, seen + bad + 1, column.name, "empty value")
        return None
    pattern = _INT_PATTERN if column.kind == "int" else _FLOAT_PATTERN
    ok = pc.match_substring_regex(values, pattern)
    empty = pc.equal(values, "")
    if column.nullable:
        ok = pc.or_(ok, empty)
    bad = _first_false(ok)
    if bad >= 0:
        value = values[bad].as_py()
        problem = "empty value" if value == "" else \
            f"{value!r} is not {'an integer' if column.kind == 'int' else 'a number'}"
        raise _fail(spec, seen + bad + 1, column.name, problem)
    if column.kind == "int":
        converted = pc.cast(values, pa.int64()).to_numpy()
    else:
        nulled = pc.if_else(empty, pa.scalar(None, pa.string()), values)
        converted = pc.cast(nulled, pa.float64()).to_numpy(zero_copy_only=False)
    low = column.min if column.min is not None else -np.inf
    high = column.max if column.max is not None else np.inf
    with np.errstate(invalid="ignore"):
        out_of_range = (converted < low) | (converted > high)  # NaN (empty) compares False: allowed above
    if out_of_range.any():
        bad = int(np.argmax(out_of_range))
        raise _fail(spec, seen + bad + 1, column.name,
                    f"{values[bad].as_py()} is out of range [{_fmt(low)}, {_fmt(high)}]")
    return converted


def _fmt(bound: float) -> str:
    return str(int(bound)) if np.isfinite(bound) else ("-inf" if bound < 0 else "inf")


def _read_columns(source: Path, spec: CsvFile, keep: tuple[str, ...], dtype=np.int32) -> tuple[int, dict]:
    """All rows of `keep` columns (ints narrowed to `dtype`), after checking every value of the file."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    rows = 0
    for _, count, block in read_blocks(source / spec.name, spec, keep):
        for name in keep:
            values = block[name]
            parts[name].append(values.astype(dtype) if values.dtype == np.int64 else values)
        rows += count
    return rows, {name: (np.concatenate(p) if p else np.empty(0, dtype)) for name, p in parts.items()}


def first_duplicate(keys: np.ndarray) -> int | None:
    """Index of the first row whose key already appeared in an earlier row, or None."""
    if len(keys) < 2:
        return None
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    return int(order[repeated].min()) if len(repeated) else None


def first_missing(values: np.ndarray, known: np.ndarray) -> int | None:
    """Index of the first value not in `known` (sorted unique), or None."""
    if len(values) == 0:
        return None
    if len(known) == 0:
        return 0
    pos = np.searchsorted(known, values)
    found = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == values)
    return None if found.all() else int(np.argmin(found))


def _check_unique(spec: CsvFile, column: str, values: np.ndarray) -> np.ndarray:
    duplicate = first_duplicate(values)
    if duplicate is not None:
        raise _fail(spec, duplicate + 1, column, f"{column} {values[duplicate]} appears more than once")
    return np.sort(values)


def _check_refs(spec: CsvFile, column: str, values: np.ndarray, known: np.ndarray, target: CsvFile) -> None:
    missing = first_missing(values, known)
    if missing is not None:
        raise _fail(spec, missing + 1, column, f"{column} {values[missing]} does not exist in {target.name}")


def validate_instacart(source: str | Path) -> InstacartSummary:
    """Check the six Instacart files under `source` (see the module docstring); raise on the first problem."""
    source = Path(source)
    if not source.is_dir():
        raise InstacartDataError(f"{source} is not a directory; pass the directory holding the six Instacart files "
                                 "or generate them with `kuberec data instacart-synth`", str(source))
    absent = missing_files(source)
    if absent:
        raise InstacartDataError(f"{source}: missing {', '.join(absent)} (the six Instacart files are "
                                 f"{', '.join(s.name for s in FILES)}); nothing was ingested", absent[0])
    summary = InstacartSummary(str(source))

    rows, departments = _read_columns(source, DEPARTMENTS, ("department_id",))
    summary.rows[DEPARTMENTS.name] = rows
    department_ids = _check_unique(DEPARTMENTS, "department_id", departments["department_id"])

    rows, aisles = _read_columns(source, AISLES, ("aisle_id",))
    summary.rows[AISLES.name] = rows
    aisle_ids = _check_unique(AISLES, "aisle_id", aisles["aisle_id"])

    rows, products = _read_columns(source, PRODUCTS, ("product_id", "aisle_id", "department_id"))
    summary.rows[PRODUCTS.name] = rows
    product_ids = _check_unique(PRODUCTS, "product_id", products["product_id"])
    _check_refs(PRODUCTS, "aisle_id", products["aisle_id"], aisle_ids, AISLES)
    _check_refs(PRODUCTS, "department_id", products["department_id"], department_ids, DEPARTMENTS)

    rows, orders = _read_columns(source, ORDERS, ("order_id", "user_id", "eval_set", "order_number"))
    summary.rows[ORDERS.name] = rows
    _check_orders(orders)
    codes = orders["eval_set"]
    summary.users = int(len(np.unique(orders["user_id"])))
    summary.orders_by_eval_set = {name: int((codes == i).sum()) for i, name in enumerate(EVAL_SETS)}

    all_orders = np.sort(orders["order_id"])
    for spec, eval_set in ((ORDER_PRODUCTS_PRIOR, "prior"), (ORDER_PRODUCTS_TRAIN, "train")):
        own_orders = np.sort(orders["order_id"][codes == EVAL_SETS.index(eval_set)])
        rows, lines = _read_columns(source, spec, ("order_id", "product_id"))
        summary.rows[spec.name] = rows
        missing = first_missing(lines["order_id"], own_orders)
        if missing is not None:
            order_id = lines["order_id"][missing]
            known = first_missing(np.array([order_id]), all_orders) is None
            problem = (f"order {order_id} is not a '{eval_set}' order in orders.csv" if known
                       else f"order_id {order_id} does not exist in orders.csv")
            raise _fail(spec, missing + 1, "order_id", problem)
        _check_refs(spec, "product_id", lines["product_id"], product_ids, PRODUCTS)
        pairs = (lines["order_id"].astype(np.int64) << 32) | lines["product_id"].astype(np.int64)
        duplicate = first_duplicate(pairs)
        if duplicate is not None:
            raise _fail(spec, duplicate + 1, "product_id", f"product {lines['product_id'][duplicate]} appears "
                                                           f"twice in order {lines['order_id'][duplicate]}")
        del lines, pairs
    log.info("validated %s: %s", source, ", ".join(f"{k} {v:,} rows" for k, v in summary.rows.items()))
    return summary


def _check_orders(orders: dict[str, np.ndarray]) -> None:
    """Order ids unique; (user, order_number) unique; a user's train/test order is their last, and only one."""
    _check_unique(ORDERS, "order_id", orders["order_id"])
    user = orders["user_id"].astype(np.int64)
    number = orders["order_number"].astype(np.int64)
    duplicate = first_duplicate((user << 32) | number)
    if duplicate is not None:
        raise _fail(ORDERS, duplicate + 1, "order_number",
                    f"user {user[duplicate]} has order_number {number[duplicate]} more than once")
    by_user = np.lexsort((number, user))
    last = np.ones(len(user), dtype=bool)  # last[i]: row by_user[i] is its user's highest order_number
    last[:-1] = user[by_user][1:] != user[by_user][:-1]
    final_not_last = (orders["eval_set"][by_user] != EVAL_SETS.index("prior")) & ~last
    if final_not_last.any():
        row = int(by_user[final_not_last].min())
        raise _fail(ORDERS, row + 1, "eval_set",
                    f"user {user[row]}'s {EVAL_SETS[orders['eval_set'][row]]} order (order_number {number[row]}) "
                    "is not their last order; each user has at most one train/test order and it comes last")
