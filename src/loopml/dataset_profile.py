"""The per-column profile kept in a dataset version's manifest, computed in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from loopml.dataset_rules import ColumnRule

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
