"""Ingest: a first ingest, and an unchanged re-ingest, against md5sum and pandas on the same file.

    .venv/bin/python benchmarks/bench_ingest.py        # writes benchmarks/results/ingest.json

One CSV of 10M rows x 8 columns (ints, floats, a timestamp, categories). Peers in the same run:
``md5sum`` of the file (the floor for "did anything change"), and pandas ``read_csv`` +
``to_parquet`` (the floor for a first ingest without validation). loopml's first ingest validates
every value against the declared schema, profiles the columns and writes a canonical Parquet whose
hash is the version id; its re-ingest of the unchanged file hashes the bytes once and writes nothing.
Median of 3 runs each, interleaved; pandas and loopml's first ingest each run in a fresh process,
whose peak memory above its imports (VmHWM - VmRSS after imports) is compared with the Parquet it
wrote. 10M rows (713 MB) by default, the issue's case; ``LOOPML_BENCH_ROWS=1000000`` for a quick run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROWS, REPEATS = 10_000_000, 3


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


def memory_mib(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rules():
    from loopml.dataset_rules import ColumnRule

    return (ColumnRule("id", "int", nullable=False), ColumnRule("ts", "timestamp", nullable=False),
            ColumnRule("amount", "float", min=0), ColumnRule("count", "int"), ColumnRule("score", "float"),
            ColumnRule("plan", "category", allowed=("basic", "plus", "pro")), ColumnRule("region", "category"),
            ColumnRule("tenure", "int"))


def contender(name: str, csv: Path, out: Path) -> dict:
    """One run in this fresh process: seconds, and peak memory above the imports."""
    import pyarrow.csv  # (imports are not the work)
    import pyarrow.parquet  # noqa: F401

    from loopml.backends.local_store import LocalArtifactStore
    from loopml.datasets import DatasetCatalog

    baseline = memory_mib("VmRSS")
    if name == "pandas read_csv + to_parquet":
        seconds = timed(lambda: pd.read_csv(csv).to_parquet(out / "pandas.parquet"))
        size = (out / "pandas.parquet").stat().st_size
    else:
        catalog = DatasetCatalog(LocalArtifactStore(out / "store", fsync=False))
        seconds = timed(lambda: catalog.ingest("orders", csv, columns=rules()))
        size = catalog.store.info(catalog.get("orders").data_key).size
    return {"seconds": seconds, "peak_over_imports_mib": memory_mib("VmHWM") - baseline,
            "peak_rss_mib": memory_mib("VmHWM"), "parquet_mib": size / 2**20}


def in_fresh_process(name: str, csv: Path, out: Path) -> dict:
    import sys

    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, __file__, "--contender", name, str(csv), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--contender":
        print(json.dumps(contender(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    from loopml.backends.local_store import LocalArtifactStore
    from loopml.datasets import DatasetCatalog

    results: dict[str, list[float]] = {"md5sum": [], "pandas read_csv + to_parquet": [],
                                       "loopml first ingest": [], "loopml unchanged re-ingest": []}
    memory: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = root / "data.csv"
        make_csv(csv)
        for i in range(REPEATS):
            results["md5sum"].append(timed(lambda: subprocess.run(["md5sum", str(csv)], check=True,
                                                                  capture_output=True)))
            for name in ("pandas read_csv + to_parquet", "loopml first ingest"):
                run = in_fresh_process(name, csv, root / f"{name.split()[0]}{i}")
                results[name].append(run["seconds"])
                memory[name] = {k: round(v, 1) for k, v in run.items() if k != "seconds"}
            catalog = DatasetCatalog(LocalArtifactStore(root / f"loopml{i}" / "store", fsync=False))
            results["loopml unchanged re-ingest"].append(
                timed(lambda c=catalog: c.ingest("orders", csv, columns=rules())))
        size_mb = csv.stat().st_size / 1e6
    summary = {name: round(statistics.median(v), 3) for name, v in results.items()}
    out = {"seconds": summary, "memory_last_run": memory, "runs": results, "rows": ROWS,
           "csv_mb": round(size_mb, 1), "python": platform.python_version(), "machine": platform.machine()}
    path = Path(__file__).parent / "results" / "ingest.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, value in summary.items():
        print(f"{name:32s} {value:8.3f} s")
    print(json.dumps(memory, indent=2))
    print(f"{size_mb:.0f} MB CSV; written to {path}")


if __name__ == "__main__":
    ROWS = int(os.environ.get("LOOPML_BENCH_ROWS", ROWS))
    main()
