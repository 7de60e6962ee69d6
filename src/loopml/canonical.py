"""Streamed ingest: source files to one canonical Parquet file, in bounded memory.

A CSV with a declared schema is read in blocks by Arrow's multithreaded CSV reader, straight into
the declared types, and every block is checked against the rules with Arrow compute. That path only
ever *accepts*: a file it cannot accept as it stands (a value Arrow will not convert, a rule broken,
a timestamp without a zone, a short row) is handed whole to the reference path in
:mod:`loopml.dataset_checks`, which reads it with pandas and either accepts it or raises the typed error
that names the file, column, line and value. So errors read the same as before, and accepted data
are the same rows either way.

Rows are written in row groups of exactly ``ROW_GROUP`` rows (pyarrow's default), each from one
contiguous table, so the bytes, and therefore the version id, do not depend on block boundaries,
on how many files the rows came from, or on which path read them. (Contiguous matters: written
chunk by chunk, a high-cardinality column falls back from dictionary to plain encoding at another
row, and the bytes differ though the values do not. Combining costs one copy of a row group.)
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loopml import dataset_checks
from loopml.dataset_rules import SUFFIXES, ColumnRule, arrow_schema

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ROW_GROUP = 1 << 20  # rows per row group: pyarrow's write_table default
BLOCK = 1 << 20  # bytes of CSV per block (8 MB: +110 MiB peak at 3M rows, no faster)
# pandas' default missing-value strings (read_csv keep_default_na), so both paths see the same nulls
NA_VALUES = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
TRUE_VALUES = ("true", "True", "TRUE", "1", "yes", "Yes", "YES")
FALSE_VALUES = ("false", "False", "FALSE", "0", "no", "No", "NO")


class NotFastPath(Exception):
    """The fast path cannot accept this file as it stands; the reference path decides."""


def arrow_type(rule: ColumnRule) -> pa.DataType:
    import pyarrow as pa

    return {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
            "category": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}[rule.type]


def csv_batches(path: Path, rules: tuple[ColumnRule, ...], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The file's rows in declared types and order, block by block; ``NotFastPath`` when it cannot."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [r.name for r in rules]
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=BLOCK),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={r.name: arrow_type(r) for r in rules}, null_values=list(NA_VALUES),
                strings_can_be_null=True, quoted_strings_can_be_null=True,
                true_values=list(TRUE_VALUES), false_values=list(FALSE_VALUES)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise NotFastPath(str(exc)) from None
    header = reader.schema.names
    if sorted(header) != sorted(names) or len(set(header)) != len(header):
        raise NotFastPath("the header differs from the schema")
    rows = 0
    try:
        for batch in reader:
            batch = batch.select(names)
            check(batch, rules)
            rows += batch.num_rows
            yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NotFastPath(str(exc)) from None
    if not rows:
        raise NotFastPath("no rows")


def check(batch: pa.RecordBatch, rules: tuple[ColumnRule, ...]) -> None:
    """Raise ``NotFastPath`` unless every value of ``batch`` passes its rule."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for rule, column in zip(rules, batch.columns, strict=True):
        if not rule.nullable and column.null_count:
            raise NotFastPath(f"{rule.name}: missing value")
        if (rule.type == "float" and column.null_count < len(column)
                and pc.any(pc.or_(pc.is_inf(column), pc.is_nan(column))).as_py()):
            raise NotFastPath(f"{rule.name}: not finite")
        if rule.min is not None or rule.max is not None:
            if rule.type not in ("int", "float"):
                raise NotFastPath(f"{rule.name}: bounds on a {rule.type} column")
            low, high = pc.min_max(column).values()
            if low.is_valid and ((rule.min is not None and low.as_py() < rule.min)
                                 or (rule.max is not None and high.as_py() > rule.max)):
                raise NotFastPath(f"{rule.name}: out of bounds")
        if rule.allowed is not None:
            outside = pc.invert(pc.is_in(column, value_set=pa.array(rule.allowed, pa.string()), skip_nulls=True))
            if pc.any(pc.and_(pc.is_valid(column), outside)).as_py():
                raise NotFastPath(f"{rule.name}: value not allowed")


def frame_batches(frame: pd.DataFrame, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """A validated pandas frame (the reference path's result) as batches of the canonical schema."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame.reset_index(drop=True), schema=schema, preserve_index=False)
    yield from table.replace_schema_metadata(None).to_batches()


class CanonicalWriter:
    """Batches in, canonical Parquet out: row groups of exactly ``ROW_GROUP`` rows."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.schema = schema
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd", write_statistics=True,
                                        store_schema=False)

    @property
    def accepted(self) -> int:
        """Rows handed to :meth:`write` so far (written or waiting for their row group)."""
        return self.rows + self._pending_rows

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            take = min(batch.num_rows, ROW_GROUP - self._pending_rows)
            self._pending.append(batch.slice(0, take))
            self._pending_rows += take
            batch = batch.slice(take)
            if self._pending_rows == ROW_GROUP:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending_rows:
            table = pa.Table.from_batches(self._pending, schema=self.schema).combine_chunks()
            self._writer.write_table(table, row_group_size=ROW_GROUP)
            self.rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        self._pending, self._pending_rows = [], 0
        self._writer.close()


def write_canonical(sources: Iterable[Callable[[], Iterator[pa.RecordBatch]]], path: Path,
                    schema: pa.Schema) -> tuple[list[int], str]:
    """Write every source's batches, in order, into ``path``. Returns (rows per source, sha256)."""
    writer = CanonicalWriter(path, schema)
    counts = []
    try:
        for source in sources:
            before = writer.accepted
            for batch in source():
                writer.write(batch)
            counts.append(writer.accepted - before)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return counts, digest.hexdigest()


def canonical_parquet(frame: pd.DataFrame, rules: tuple[ColumnRule, ...]) -> bytes:
    """Deterministic Parquet bytes for validated rows (same rows, same bytes as a streamed ingest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.reset_index(drop=True), schema=arrow_schema(rules),
                                 preserve_index=False).replace_schema_metadata(None)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=False,
                   row_group_size=ROW_GROUP)
    return buf.getvalue()


def write_streamed(files: list[Path], rules: tuple[ColumnRule, ...], out: Path) -> tuple[list[int], str]:
    """Every file into one canonical Parquet at ``out``: CSVs streamed when Arrow can take them as
    they stand, any other file (and any CSV the fast path gives up on) through the reference path.
    Returns (rows per file, sha256 of the Parquet = the version id)."""
    schema = arrow_schema(rules)
    reference_path: set[Path] = {f for f in files if SUFFIXES[f.suffix.lower()] != "csv"}

    def batches(path: Path) -> Iterator[pa.RecordBatch]:
        if path in reference_path:
            yield from frame_batches(dataset_checks.validate_file(dataset_checks.read_file(path), rules, path), schema)
            return
        try:
            yield from csv_batches(path, rules, schema)
        except NotFastPath:
            reference_path.add(path)  # start again, this file on the reference path
            raise

    while True:
        try:
            return write_canonical([functools.partial(batches, f) for f in files], out, schema)
        except NotFastPath:
            continue


def release_arrow_memory() -> None:
    """Hand memory Arrow's allocator keeps cached back to the system (between the write and the
    profile, so their peaks do not add up)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def read_frame(source: bytes | Path) -> pd.DataFrame:
    """One Parquet file (bytes or a path) as a DataFrame.

    ``pq.ParquetFile(...).read()`` rather than ``pq.read_table`` or ``pd.read_parquet``: those build a
    ``ParquetDataset`` and import ``pyarrow.dataset`` (~0.8 s on first use), which a single file
    does not need; an unchanged ``loopml run`` paid it for nothing.
    """
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(source) if isinstance(source, bytes) else source).read().to_pandas()

