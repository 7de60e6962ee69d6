"""A dataset's declared columns: types, nullability, bounds and allowed values; inferred when undeclared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loopml.errors import DataValidationError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

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


INT64_LIMIT = 2.0**63  # |value| at or above this does not fit a 64-bit integer


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


ARROW_TYPES = {"int": "int64", "float": "float64", "string": "string", "category": "string",
          "bool": "bool"}


def arrow_schema(rules: tuple[ColumnRule, ...]) -> pa.Schema:
    import pyarrow as pa

    fields = []
    for r in rules:
        typ = pa.timestamp("us", tz="UTC") if r.type == "timestamp" else pa.type_for_alias(ARROW_TYPES[r.type])
        fields.append(pa.field(r.name, typ, nullable=r.nullable))
    return pa.schema(fields)
