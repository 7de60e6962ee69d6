"""Dataset versioning: ingest CSV/Parquet, validate, canonicalise, store by content hash.

A version's id is the sha256 of its canonical Parquet bytes (columns in schema order, types
normalised, rows in source order, files in sorted path order). Re-ingesting identical rows makes
no new version, wherever they come from. Data is written first and the manifest last, so a
version is visible only when complete; a rejected input writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob as globlib
import hashlib
import io
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.errors import (
    DatasetNotFoundError,
    DataValidationError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from loopml.keys import validate_key
from loopml.records import ColumnSchema, DatasetVersion

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from loopml.protocols import ArtifactStore

TYPES = ("int", "float", "string", "bool", "timestamp", "category")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ColumnRule:
    """A declared column: type, nullability and optional bounds or allowed values."""

    name: str
    type: str
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise DataValidationError(
                f"column {self.name!r}: unknown type {self.type!r}; choose one of: {', '.join(TYPES)}",
                column=self.name,
            )


def rules_from_config(columns: Mapping[str, Any]) -> tuple[ColumnRule, ...]:
    """Build rules from ``[datasets.<name>.columns]`` (ColumnConfig models or plain dicts)."""
    rules = []
    for name, spec in columns.items():
        data = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
        allowed = data.get("allowed")
        rules.append(ColumnRule(name, data["type"], data.get("nullable", True), data.get("min"),
                                data.get("max"), tuple(allowed) if allowed else None))
    return tuple(rules)


# ---------------------------------------------------------------------- reading sources
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


def _read_file(path: Path) -> pd.DataFrame:
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


def _row_label(path: Path, index: int) -> str:
    # CSV rows are reported as file line numbers (header is line 1); Parquet as 0-based rows.
    return f"line {index + 2}" if path.suffix.lower() == ".csv" else f"row {index}"


def _fail(path: Path, column: str, index: int, value: object, problem: str, fix: str) -> DataValidationError:
    return DataValidationError(
        f"file {str(path)!r}, column {column!r}, {_row_label(path, index)}: {problem} "
        f"(value {value!r}); {fix}",
        file=str(path), column=column, row=index, example=value,
    )


INT64_LIMIT = 2.0**63  # |value| at or above this does not fit a 64-bit integer


def _coerce(frame: pd.DataFrame, rule: ColumnRule, path: Path) -> pd.Series:
    import numpy as np
    import pandas as pd

    raw = frame[rule.name]
    present = raw.notna()
    if rule.type in ("int", "float"):
        values = pd.to_numeric(raw, errors="coerce")
        bad = present & values.isna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise _fail(path, rule.name, i, raw.iloc[i], f"expected a number ({rule.type})",
                        "fix the value or declare the column as type 'string'")
        finite = values.dropna()
        if not np.isfinite(finite.to_numpy(dtype=float)).all():
            i = int(np.argmax(~np.isfinite(values.fillna(0).to_numpy(dtype=float))))
            raise _fail(path, rule.name, i, raw.iloc[i], "value is infinite",
                        "replace it with a finite number or leave it empty")
        if rule.type == "int":
            frac = values.notna() & (values.fillna(0) % 1 != 0)
            if frac.any():
                i = int(np.argmax(frac.to_numpy()))
                raise _fail(path, rule.name, i, raw.iloc[i], "expected a whole number",
                            "fix the value or declare the column as type 'float'")
            huge = (values.abs().astype("float64") >= INT64_LIMIT).fillna(False)
            if huge.any():
                i = int(np.argmax(huge.to_numpy(dtype=bool)))
                raise _fail(path, rule.name, i, raw.iloc[i], "whole number outside the 64-bit integer range",
                            "declare the column as type 'string' (ids, codes) or 'float' (quantities)")
            values = values.astype("Int64")
        else:
            values = _exact_floats(raw, present, values)
    elif rule.type == "bool":
        mapping = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
        if raw.dtype == bool:
            values = raw.astype("boolean")
        else:
            lowered = raw.astype("string").str.strip().str.lower()
            values = lowered.map(mapping).astype("boolean")
            bad = present & values.isna()
            if bad.any():
                i = int(np.argmax(bad.to_numpy()))
                raise _fail(path, rule.name, i, raw.iloc[i], "expected true/false",
                            "use true, false, 1, 0, yes or no")
    elif rule.type == "timestamp":
        values = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        bad = present & values.isna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise _fail(path, rule.name, i, raw.iloc[i], "expected an ISO 8601 timestamp",
                        "write it like 2024-01-31T12:00:00Z")
        values = values.astype("datetime64[us, UTC]")
    else:  # string, category
        values = raw.astype("string")
    nulls = values.isna()
    if not rule.nullable and nulls.any():
        i = int(np.argmax(nulls.to_numpy()))
        raise _fail(path, rule.name, i, raw.iloc[i], "value is missing but the column is not nullable",
                    "fill it in or declare nullable = true")
    if rule.min is not None or rule.max is not None:
        numeric = values.astype("float64")  # missing values are never out of bounds
        out = np.zeros(len(numeric), dtype=bool)
        if rule.min is not None:
            out |= (numeric < rule.min).fillna(False).to_numpy(dtype=bool)
        if rule.max is not None:
            out |= (numeric > rule.max).fillna(False).to_numpy(dtype=bool)
        if out.any():
            i = int(np.argmax(out))
            raise _fail(path, rule.name, i, raw.iloc[i],
                        f"value is outside [{rule.min}, {rule.max}]", "fix the value or widen the bounds")
    if rule.allowed is not None:
        bad = (values.notna() & ~values.isin(rule.allowed)).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(path, rule.name, i, raw.iloc[i],
                        f"value is not one of {list(rule.allowed)}", "fix the value or extend 'allowed'")
    return values


def _exact_floats(raw: pd.Series, present: pd.Series, parsed: pd.Series) -> pd.Series:
    """Text parsed again with Python's ``float()``, which rounds correctly, as Arrow's CSV reader
    does (``pd.to_numeric`` can be off in the last bit), so both ingest paths store the same floats."""
    if raw.dtype != object:
        return parsed.astype("float64")
    try:
        return raw.where(present).astype("float64")
    except (TypeError, ValueError):
        return parsed.astype("float64")


def infer_rules(frame: pd.DataFrame) -> tuple[ColumnRule, ...]:
    """Infer rules from a frame (for sources without a declared schema)."""
    import pandas as pd

    rules = []
    for name in frame.columns:
        col = frame[name]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            numeric = pd.to_numeric(col, errors="coerce")
            if numeric.notna().sum() == col.notna().sum() and col.notna().any():
                whole = numeric.dropna()
                if not (whole % 1 == 0).all():
                    kind = "float"
                elif (whole.abs().astype("float64") < INT64_LIMIT).all():
                    kind = "int"
                else:
                    kind = "string"  # whole numbers beyond int64 are ids or codes, not quantities
            else:
                kind = "string"
        elif pd.api.types.is_bool_dtype(col):
            kind = "bool"
        elif pd.api.types.is_integer_dtype(col):
            kind = "int"
        elif pd.api.types.is_float_dtype(col):
            kind = "float"
        elif pd.api.types.is_datetime64_any_dtype(col):
            kind = "timestamp"
        else:
            kind = "string"
        rules.append(ColumnRule(str(name), kind))
    return tuple(rules)


def _validate_file(frame: pd.DataFrame, rules: tuple[ColumnRule, ...], path: Path) -> pd.DataFrame:
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
    return pd.DataFrame({r.name: _coerce(frame, r, path) for r in rules})


_ARROW = {"int": "int64", "float": "float64", "string": "string", "category": "string",
          "bool": "bool"}


def _arrow_schema(rules: tuple[ColumnRule, ...]) -> pa.Schema:
    import pyarrow as pa

    fields = []
    for r in rules:
        typ = pa.timestamp("us", tz="UTC") if r.type == "timestamp" else pa.type_for_alias(_ARROW[r.type])
        fields.append(pa.field(r.name, typ, nullable=r.nullable))
    return pa.schema(fields)


def canonical_parquet(frame: pd.DataFrame, rules: tuple[ColumnRule, ...]) -> bytes:
    """Deterministic Parquet bytes for validated rows (same rows, same bytes as a streamed ingest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loopml import canonical

    table = pa.Table.from_pandas(frame.reset_index(drop=True), schema=_arrow_schema(rules),
                                 preserve_index=False).replace_schema_metadata(None)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=False,
                   row_group_size=canonical.ROW_GROUP)
    return buf.getvalue()


def _write_streamed(files: list[Path], rules: tuple[ColumnRule, ...], out: Path) -> tuple[list[int], str]:
    """Every file into one canonical Parquet at ``out``: CSVs streamed when Arrow can take them as
    they stand, any other file (and any CSV the fast path gives up on) through the reference path.
    Returns (rows per file, sha256 of the Parquet = the version id)."""
    from loopml import canonical

    schema = _arrow_schema(rules)
    reference_path: set[Path] = {f for f in files if SUFFIXES[f.suffix.lower()] != "csv"}

    def batches(path: Path) -> Iterator[pa.RecordBatch]:
        if path in reference_path:
            yield from canonical.frame_batches(_validate_file(_read_file(path), rules, path), schema)
            return
        try:
            yield from canonical.csv_batches(path, rules, schema)
        except canonical.NotFastPath:
            reference_path.add(path)  # start again, this file on the reference path
            raise

    while True:
        try:
            return canonical.write_canonical([functools.partial(batches, f) for f in files], out, schema)
        except canonical.NotFastPath:
            continue


def _release_arrow_memory() -> None:
    """Hand memory Arrow's allocator keeps cached back to the system (between the write and the
    profile, so their peaks do not add up)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def profile_parquet(path: Path, rules: tuple[ColumnRule, ...]) -> dict[str, dict[str, Any]]:
    """The manifest's per-column summary (nulls; min, max, mean, std, median; distinct and top 10
    values; true fraction) of a written version, read one row
    group of one column at a time and computed in Arrow and NumPy: a numeric column costs one
    float64 array (for the exact median), a text column its distinct values, never a Python object
    per value."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    groups = range(parquet.metadata.num_row_groups)
    profile: dict[str, dict[str, Any]] = {}
    for index, rule in enumerate(rules):
        def chunks(name: str = rule.name) -> Iterator[pa.Array]:
            for group in groups:
                column = parquet.read_row_group(group, columns=[name]).column(0).combine_chunks()
                yield column.drop_null() if column.null_count else column

        stats = [parquet.metadata.row_group(g).column(index).statistics for g in groups]
        if all(st is not None and st.has_null_count for st in stats):
            nulls = sum(st.null_count for st in stats)
        else:  # a file written without statistics: count them
            nulls = sum(parquet.read_row_group(g, columns=[rule.name]).column(0).null_count for g in groups)
        present = parquet.metadata.num_rows - nulls
        entry: dict[str, Any] = {"type": rule.type, "nulls": int(nulls)}
        if present and rule.type in ("int", "float"):
            values, at = np.empty(present, dtype=np.float64), 0
            for chunk in chunks():
                values[at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
            entry.update(min=float(values.min()), max=float(values.max()), mean=float(values.mean()),
                         std=float(values.std(ddof=0)), p50=float(np.median(values, overwrite_input=True)))
            del values
        elif present and rule.type == "timestamp":
            ranges = [tuple(pc.min_max(chunk).values()) for chunk in chunks() if len(chunk)]
            entry.update(min=pd.Timestamp(min(r[0].as_py() for r in ranges)).isoformat(),
                         max=pd.Timestamp(max(r[1].as_py() for r in ranges)).isoformat())
        elif present and rule.type == "bool":
            true = sum(int(pc.sum(chunk.cast("int64")).as_py() or 0) for chunk in chunks())
            entry.update(true_fraction=true / present)
        elif present:
            parts = [pc.value_counts(chunk) for chunk in chunks() if len(chunk)]
            counted = pa.table({"value": pa.concat_arrays([c.field("values") for c in parts]),
                                "n": pa.concat_arrays([c.field("counts") for c in parts])})
            totals = counted.group_by("value", use_threads=False).aggregate([("n", "sum")])
            labels, n = totals.column("value"), totals.column("n_sum").to_numpy()
            order = np.argsort(-n, kind="stable")[:10]
            entry.update(distinct=len(n), top={str(labels[int(i)].as_py()): int(n[i]) for i in order})
        profile[rule.name] = entry
    return profile


# ---------------------------------------------------------------------- the catalogue
class DatasetCatalog:
    """Dataset versions kept in an artifact store under ``datasets/<name>/<id>/``."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @staticmethod
    def _prefix(name: str) -> str:
        validate_key(name)
        if "/" in name:
            raise DataValidationError(f"dataset name {name!r} must not contain '/'")
        return f"datasets/{name}/"

    def ingest(
        self,
        name: str,
        source: str | Path,
        *,
        columns: tuple[ColumnRule, ...] | None = None,
    ) -> tuple[DatasetVersion, bool]:
        """Validate and store ``source`` as a version of ``name``. Returns (version, created)."""

        prefix = self._prefix(name)
        files = resolve_sources(source)
        hashes = [_file_sha256(path) for path in files]  # one pass over the bytes, before any parsing
        seen_key = f"{prefix}sources/{_source_key(hashes, columns)}.json"
        if self.store.exists(seen_key):  # the same bytes under the same rules: that version, no parse
            known = json.loads(self.store.get(seen_key))["id"]
            with contextlib.suppress(DatasetNotFoundError):
                return self._read_manifest(name, known), False
        rules = columns
        if rules is None:  # no declared schema: the first file's values decide the types
            first = _read_file(files[0])
            rules = infer_rules(first)
            del first
        with tempfile.TemporaryDirectory(prefix="loopml-ingest-") as tmp:
            out = Path(tmp) / "data.parquet"
            counts, version_id = _write_streamed(files, rules, out)
            _release_arrow_memory()
            sources = [{"path": str(path.resolve()), "rows": rows, "sha256": sha}
                       for path, rows, sha in zip(files, counts, hashes, strict=True)]
            base = f"{prefix}{version_id}/"
            remember = functools.partial(self._remember_source, seen_key, version_id)
            if self.store.exists(base + "manifest.json"):
                remember()
                return self._read_manifest(name, version_id), False
            self.store.put(base + "data.parquet", out, metadata={"content-type": "application/parquet"})
            version = DatasetVersion(
                name=name, id=version_id, row_count=sum(counts),
                columns=tuple(ColumnSchema(r.name, r.type, r.nullable) for r in rules),
                profile=profile_parquet(out, rules),
                source={"files": sources, "given": str(source)},
                created_at=datetime.now(UTC), data_key=base + "data.parquet",
            )
        manifest = _manifest_json(version, rules)
        try:
            self.store.put(base + "manifest.json", manifest,
                           metadata={"content-type": "application/json"})
        except ObjectExistsError:  # a concurrent ingest of the same rows won the race
            remember()
            return self._read_manifest(name, version_id), False
        remember()
        return version, True

    def _remember_source(self, key: str, version_id: str) -> None:
        """Source bytes + rules -> version: the next ingest of the same files is one hash pass.
        Written after the manifest, so it only ever names a complete version."""
        with contextlib.suppress(ObjectExistsError):
            self.store.put(key, json.dumps({"id": version_id}).encode(), metadata={"content-type": "application/json"})

    def _read_manifest(self, name: str, version_id: str) -> DatasetVersion:
        key = f"{self._prefix(name)}{version_id}/manifest.json"
        try:
            raw = json.loads(self.store.get(key))
        except ObjectNotFoundError:
            raise DatasetNotFoundError(f"dataset {name!r} has no version {version_id[:12]}") from None
        return DatasetVersion(
            name=raw["name"], id=raw["id"], row_count=raw["row_count"],
            columns=tuple(ColumnSchema(**c) for c in raw["columns"]),
            profile=raw["profile"], source=raw["source"],
            created_at=datetime.fromisoformat(raw["created_at"]), data_key=raw["data_key"],
        )

    def names(self) -> list[str]:
        return sorted({info.key.split("/")[1] for info in self.store.list("datasets/")
                       if info.key.endswith("/manifest.json")})

    def versions(self, name: str) -> list[DatasetVersion]:
        """All versions of ``name``, oldest first."""
        out = [self._read_manifest(name, info.key.split("/")[2])
               for info in self.store.list(self._prefix(name)) if info.key.endswith("/manifest.json")]
        return sorted(out, key=lambda v: v.created_at)

    def get(self, ref: str) -> DatasetVersion:
        """``name`` (latest), ``name@<id prefix>`` or ``name@latest``."""
        name, _, wanted = ref.partition("@")
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "(none yet: run `loopml data ingest`)"
            raise DatasetNotFoundError(f"no dataset named {name!r}; known datasets: {known}")
        if not wanted or wanted == "latest":
            return versions[-1]
        matches = [v for v in versions if v.id.startswith(wanted)]
        if len(matches) != 1:
            problem = "matches no version" if not matches else "is ambiguous"
            raise DatasetNotFoundError(f"dataset reference {ref!r} {problem}; see `loopml data list {name}`")
        return matches[0]

    def load(self, version: DatasetVersion | str) -> pd.DataFrame:
        """The version's rows, verified against its content hash."""
        import pyarrow.parquet as pq

        if isinstance(version, str):
            version = self.get(version)
        data = self.store.get(version.data_key)
        return pq.read_table(io.BytesIO(data)).to_pandas()

    def iter_all(self) -> Iterator[DatasetVersion]:
        for name in self.names():
            yield from self.versions(name)


SOURCE_KEY_FORMAT = "loopml.sources/1"


def _source_key(file_hashes: list[str], rules: tuple[ColumnRule, ...] | None) -> str:
    """What makes a version from files: their bytes in order, and the declared rules (None: inferred
    from the bytes, so the bytes decide). Paths are left out: the same files elsewhere match."""
    body = {"format": SOURCE_KEY_FORMAT, "files": file_hashes,
            "rules": None if rules is None else [dataclasses.asdict(r) for r in rules]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_json(version: DatasetVersion, rules: tuple[ColumnRule, ...]) -> bytes:
    body = {
        "name": version.name, "id": version.id, "row_count": version.row_count,
        "columns": [{"name": c.name, "type": c.type, "nullable": c.nullable} for c in version.columns],
        "rules": [{"name": r.name, "min": r.min, "max": r.max,
                   "allowed": list(r.allowed) if r.allowed else None} for r in rules],
        "profile": version.profile, "source": dict(version.source),
        "created_at": version.created_at.isoformat(), "data_key": version.data_key,
    }
    return json.dumps(body, indent=2, sort_keys=True).encode()
