"""The reference ingest path: a source file read whole with pandas, every value checked against the
rules, and a typed error naming file, column, line and value for the first that does not fit, with
the lines of up to ten more bad values and every other column that does not fit.

Only the streamed path in :mod:`loopml.canonical` is faster; it only ever accepts, and hands every
file it cannot accept as it stands to this path, which decides."""

from __future__ import annotations

import glob as globlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.dataset_rules import INT64_LIMIT, SUFFIXES, ColumnRule
from loopml.errors import DataValidationError

if TYPE_CHECKING:
    import pandas as pd

def resolve_sources(source: str | Path) -> list[Path]:
    """A file, a directory (its CSV/Parquet files) or a glob, as a sorted list of files."""
    text = str(source)
    path = Path(text)
    if any(ch in text for ch in "*?["):
        files = [Path(p) for p in globlib.glob(text, recursive=True)]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES]
    elif path.is_file():
        files = [path]
    else:
        raise DataValidationError(f"source {text!r} does not exist (expected a file, directory or glob)",
                                  file=text)
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise DataValidationError(f"source {text!r} matched no CSV or Parquet files", file=text)
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise DataValidationError(
                f"file {str(f)!r}: unsupported format {f.suffix!r}; use .csv or .parquet", file=str(f))
    return files


def read_file(path: Path) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.parquet as pq

    name = str(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"file {name!r} is empty (0 bytes); remove it or re-export it",
                                  file=name)
    kind = SUFFIXES[path.suffix.lower()]
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=False)
        else:
            frame = pq.read_table(path).to_pandas()
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"file {name!r} has no header and no rows", file=name) from None
    except Exception as exc:
        raise DataValidationError(
            f"file {name!r} is not readable {kind.upper()} ({type(exc).__name__}: {exc}); "
            "check that it is complete and really is " + kind.upper(), file=name) from None
    if len(frame) == 0:
        raise DataValidationError(f"file {name!r} has a header but no rows", file=name)
    return frame


def row_label(path: Path, index: int) -> str:
    # CSV rows are reported as file line numbers (header is line 1); Parquet as 0-based rows.
    return f"line {index + 2}" if path.suffix.lower() == ".csv" else f"row {index}"


MAX_SHOWN = 10
"""Bad values named per file: enough to see a pattern (a shifted column, a unit), not a flood."""


def fail(path: Path, column: str, bad: Any, raw: pd.Series, problem: str, fix: str) -> DataValidationError:
    """The error for every row of ``column`` flagged in ``bad`` (a boolean mask): the first with its
    line and fix, then up to :data:`MAX_SHOWN` in all with their lines, and how many there are."""
    import numpy as np

    rows = np.flatnonzero(np.asarray(bad, dtype=bool))
    index, value = int(rows[0]), raw.iloc[int(rows[0])]
    message = f"file {str(path)!r}, column {column!r}, {row_label(path, index)}: {problem} (value {value!r}); {fix}"
    if len(rows) > 1:
        shown = ", ".join(f"{row_label(path, int(i))} ({raw.iloc[int(i)]!r})" for i in rows[1:MAX_SHOWN])
        rest = f", and {len(rows) - MAX_SHOWN} more" if len(rows) > MAX_SHOWN else ""
        message += f". {len(rows)} values of this column fail the same way: also {shown}{rest}"
    return DataValidationError(message, file=str(path), column=column, row=index, example=value)


def coerce(frame: pd.DataFrame, rule: ColumnRule, path: Path) -> pd.Series:
    import numpy as np
    import pandas as pd

    raw = frame[rule.name]
    present = raw.notna()
    if rule.type in ("int", "float"):
        values = pd.to_numeric(raw, errors="coerce")
        bad = present & values.isna()
        if bad.any():
            raise fail(path, rule.name, bad.to_numpy(), raw, f"expected a number ({rule.type})",
                        "fix the value or declare the column as type 'string'")
        finite = values.dropna()
        if not np.isfinite(finite.to_numpy(dtype=float)).all():
            raise fail(path, rule.name, ~np.isfinite(values.fillna(0).to_numpy(dtype=float)), raw,
                       "value is infinite",
                        "replace it with a finite number or leave it empty")
        if rule.type == "int":
            frac = values.notna() & (values.fillna(0) % 1 != 0)
            if frac.any():
                raise fail(path, rule.name, frac.to_numpy(), raw, "expected a whole number",
                            "fix the value or declare the column as type 'float'")
            huge = (values.abs().astype("float64") >= INT64_LIMIT).fillna(False)
            if huge.any():
                raise fail(path, rule.name, huge.to_numpy(dtype=bool), raw,
                           "whole number outside the 64-bit integer range",
                            "declare the column as type 'string' (ids, codes) or 'float' (quantities)")
            values = values.astype("Int64")
        else:
            values = exact_floats(raw, present, values)
    elif rule.type == "bool":
        mapping = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
        if raw.dtype == bool:
            values = raw.astype("boolean")
        else:
            lowered = raw.astype("string").str.strip().str.lower()
            values = lowered.map(mapping).astype("boolean")
            bad = present & values.isna()
            if bad.any():
                raise fail(path, rule.name, bad.to_numpy(), raw, "expected true/false",
                            "use true, false, 1, 0, yes or no")
    elif rule.type == "timestamp":
        values = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        bad = present & values.isna()
        if bad.any():
            raise fail(path, rule.name, bad.to_numpy(), raw, "expected an ISO 8601 timestamp",
                        "write it like 2024-01-31T12:00:00Z")
        values = values.astype("datetime64[us, UTC]")
    else:  # string, category
        values = raw.astype("string")
    nulls = values.isna()
    if not rule.nullable and nulls.any():
        raise fail(path, rule.name, nulls.to_numpy(), raw, "value is missing but the column is not nullable",
                    "fill it in or declare nullable = true")
    if rule.min is not None or rule.max is not None:
        numeric = values.astype("float64")  # missing values are never out of bounds
        out = np.zeros(len(numeric), dtype=bool)
        if rule.min is not None:
            out |= (numeric < rule.min).fillna(False).to_numpy(dtype=bool)
        if rule.max is not None:
            out |= (numeric > rule.max).fillna(False).to_numpy(dtype=bool)
        if out.any():
            raise fail(path, rule.name, out, raw,
                        f"value is outside [{rule.min}, {rule.max}]", "fix the value or widen the bounds")
    if rule.allowed is not None:
        bad = (values.notna() & ~values.isin(rule.allowed)).to_numpy(dtype=bool)
        if bad.any():
            raise fail(path, rule.name, bad, raw,
                        f"value is not one of {list(rule.allowed)}", "fix the value or extend 'allowed'")
    return values


def exact_floats(raw: pd.Series, present: pd.Series, parsed: pd.Series) -> pd.Series:
    """Text parsed again with Python's ``float()``, which rounds correctly, as Arrow's CSV reader
    does (``pd.to_numeric`` can be off in the last bit), so both ingest paths store the same floats."""
    if raw.dtype != object:
        return parsed.astype("float64")
    try:
        return raw.where(present).astype("float64")
    except (TypeError, ValueError):
        return parsed.astype("float64")


def validate_file(frame: pd.DataFrame, rules: tuple[ColumnRule, ...], path: Path) -> pd.DataFrame:
    import pandas as pd

    declared = [r.name for r in rules]
    missing = [c for c in declared if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"file {str(path)!r} lacks declared column(s) {missing}; it has {list(frame.columns)}",
            file=str(path), column=missing[0])
    extra = [str(c) for c in frame.columns if c not in declared]
    if extra:
        raise DataValidationError(
            f"file {str(path)!r} has column(s) {extra} not in the schema; declare them under "
            "[datasets.<name>.columns] or drop them from the file", file=str(path), column=extra[0])
    columns, problems = {}, []
    for rule in rules:  # every column is checked: one run names every column that needs fixing
        try:
            columns[rule.name] = coerce(frame, rule, path)
        except DataValidationError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        first = problems[0]
        raise DataValidationError(f"{len(problems)} columns of {str(path)!r} do not fit the schema:\n"
                                  + "\n".join(f"  - {p}" for p in problems),
                                  file=first.file, column=first.column, row=first.row, example=first.example)
    return pd.DataFrame(columns)
