"""Ingest: a first ingest, and an unchanged re-ingest, against md5sum and pandas on the same file.

    .venv/bin/python benchmarks/bench_ingest.py        # writes benchmarks/results/ingest.json

One CSV of 1M rows x 8 columns (ints, floats, a timestamp, categories). Peers in the same run:
``md5sum`` of the file (the floor for "did anything change"), and pandas ``read_csv`` +
``to_parquet`` (the floor for a first ingest without validation). loopml's first ingest validates
every value against the declared schema, profiles the columns and writes a canonical Parquet whose
hash is the version id; its re-ingest of the unchanged file hashes the bytes once and writes nothing.
Median of 3 runs each, interleaved.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROWS, REPEATS = 1_000_000, 3


def make_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({
        "id": np.arange(ROWS), "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(ROWS), unit="s"),
        "amount": rng.gamma(2, 30, ROWS).round(2), "count": rng.poisson(3, ROWS), "score": rng.random(ROWS),
        "plan": rng.choice(["basic", "plus", "pro"], ROWS), "region": rng.choice(["n", "s", "e", "w"], ROWS),
        "tenure": rng.integers(0, 120, ROWS),
    }).to_csv(path, index=False)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    from loopml.backends.local_store import LocalArtifactStore
    from loopml.datasets import ColumnRule, DatasetCatalog

    rules = (ColumnRule("id", "int", nullable=False), ColumnRule("ts", "timestamp", nullable=False),
             ColumnRule("amount", "float", min=0), ColumnRule("count", "int"), ColumnRule("score", "float"),
             ColumnRule("plan", "category", allowed=("basic", "plus", "pro")), ColumnRule("region", "category"),
             ColumnRule("tenure", "int"))
    results: dict[str, list[float]] = {"md5sum": [], "pandas read_csv + to_parquet": [],
                                       "loopml first ingest": [], "loopml unchanged re-ingest": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = root / "data.csv"
        make_csv(csv)
        for i in range(REPEATS):
            results["md5sum"].append(timed(lambda: subprocess.run(["md5sum", str(csv)], check=True,
                                                                  capture_output=True)))
            results["pandas read_csv + to_parquet"].append(
                timed(lambda: pd.read_csv(csv).to_parquet(root / "pandas.parquet")))
            catalog = DatasetCatalog(LocalArtifactStore(root / f"store{i}", fsync=False))
            ingest = lambda c=catalog: c.ingest("orders", csv, columns=rules)  # noqa: E731
            results["loopml first ingest"].append(timed(ingest))
            results["loopml unchanged re-ingest"].append(timed(ingest))
        size_mb = csv.stat().st_size / 1e6
    summary = {name: round(statistics.median(v), 3) for name, v in results.items()}
    out = {"seconds": summary, "runs": results, "rows": ROWS, "csv_mb": round(size_mb, 1),
           "python": platform.python_version(), "machine": platform.machine()}
    path = Path(__file__).parent / "results" / "ingest.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, value in summary.items():
        print(f"{name:32s} {value:8.3f} s")
    print(f"{size_mb:.0f} MB CSV; written to {path}")


if __name__ == "__main__":
    main()
