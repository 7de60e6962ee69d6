"""Ingest through the CLI, as users run it, against md5sum and pandas, every contender a process.

    .venv/bin/python benchmarks/bench_ingest.py        # writes benchmarks/results/ingest.json

One CSV of 10M rows x 8 columns (ints, floats, a timestamp, categories) and a project whose
loopml.toml declares its schema. Each contender runs as a process of its own under
``/usr/bin/time`` (wall seconds from exec to exit, imports included, and peak RSS):

- ``loopml data ingest`` of the file into a fresh project: every value validated against the
  schema, the columns profiled, a canonical Parquet written and fsynced (the shipped default);
- ``loopml data ingest`` of the same, unchanged file again: one sha256 pass, nothing written;
- ``pandas read_csv + to_parquet`` in ``python -c`` (a first ingest without validation);
- ``md5sum`` of the file (the floor for "did anything change").

Median of 3, the contenders interleaved. 10M rows (713 MB) by default; ``LOOPML_BENCH_ROWS=1000000``
for a quick run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROWS, REPEATS = 10_000_000, 3
BIN = Path(sys.executable).parent
CONFIG = """project = "ingest-bench"
home = ".loopml"
[storage]
uri = "artifacts"
[datasets.orders]
source = "{csv}"
[datasets.orders.columns]
id = {{ type = "int", nullable = false }}
ts = {{ type = "timestamp", nullable = false }}
amount = {{ type = "float", min = 0 }}
count = {{ type = "int" }}
score = {{ type = "float" }}
plan = {{ type = "category", allowed = ["basic", "plus", "pro"] }}
region = {{ type = "category" }}
tenure = {{ type = "int" }}
"""
PANDAS = "import sys, pandas as pd; pd.read_csv(sys.argv[1]).to_parquet(sys.argv[2])"


def make_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({
        "id": np.arange(ROWS), "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(ROWS), unit="s"),
        "amount": rng.gamma(2, 30, ROWS).round(2), "count": rng.poisson(3, ROWS), "score": rng.random(ROWS),
        "plan": rng.choice(["basic", "plus", "pro"], ROWS), "region": rng.choice(["n", "s", "e", "w"], ROWS),
        "tenure": rng.integers(0, 120, ROWS),
    }).to_csv(path, index=False)


def timed_process(argv: list[str], cwd: Path | None = None) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of ``argv`` as a process, measured by /usr/bin/time."""
    stats = Path(tempfile.mktemp(suffix=".time"))
    subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %M", *argv], check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    seconds, kib = stats.read_text().split()[-2:]
    stats.unlink()
    return {"seconds": float(seconds), "peak_rss_mib": round(int(kib) / 1024, 1)}


def main() -> None:
    contenders = ("md5sum", "pandas read_csv + to_parquet", "loopml data ingest", "loopml data ingest, unchanged")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = root / "data.csv"
        make_csv(csv)
        parquet_mib: dict[str, float] = {}
        for i in range(REPEATS):
            order = contenders if i % 2 == 0 else (contenders[1], contenders[0], *contenders[2:])
            project = root / f"project{i}"
            project.mkdir()
            (project / "loopml.toml").write_text(CONFIG.format(csv=csv))
            for name in order:
                if name == "md5sum":
                    run = timed_process(["md5sum", str(csv)])
                elif name.startswith("pandas"):
                    out = root / f"pandas{i}.parquet"
                    run = timed_process([sys.executable, "-c", PANDAS, str(csv), str(out)])
                    parquet_mib[name] = round(out.stat().st_size / 2**20, 1)
                    out.unlink()
                else:  # the first ingest, then the unchanged one, into this round's project
                    run = timed_process([str(BIN / "loopml"), "data", "ingest", str(csv), "--name", "orders"], project)
                runs[name].append(run)
                print(i, name, run, flush=True)
            blobs = project / ".loopml" / "artifacts" / "objects"
            parquet_mib["loopml data ingest"] = round(max(p.stat().st_size for p in blobs.rglob("*") if p.is_file())
                                                      / 2**20, 1)
        size_mb = csv.stat().st_size / 1e6
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_rss_mib")}
               for name, rs in runs.items()}
    out = {"benchmark": "ingest", "summary": summary, "runs": runs, "parquet_mib": parquet_mib, "rows": ROWS,
           "repeats": REPEATS, "csv_mb": round(size_mb, 1), "python": platform.python_version(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    path = Path(__file__).parent / "results" / "ingest.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    ROWS = int(os.environ.get("LOOPML_BENCH_ROWS", ROWS))
    main()
