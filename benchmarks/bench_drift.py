"""Drift at 1M rows x 50 numeric features: loopml's sketches against SciPy, loopml's exact path and
Evidently, each in its own process (so peak RSS compares like with like), on the same Parquet files.

    .venv/bin/python benchmarks/bench_drift.py                      # writes benchmarks/results/drift.json
    EVIDENTLY_PYTHON=/tmp/evvenv/bin/python .venv/bin/python benchmarks/bench_drift.py

Evidently pins other pandas versions than loopml, so it runs from its own venv
(``python -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install evidently 'pandas<3' pyarrow``);
without ``EVIDENTLY_PYTHON`` its rows are left out. ``--evidently-rows`` (default 100,000) sets its
sample size, since at 1M it takes minutes.

loopml's and SciPy's checks are timed best of 3 in their process; Evidently once (minutes).
Every contender's p-values go through the same Holm correction at alpha 0.01, so "flags the same
columns" compares the tests, not the decision rules. Ten of the fifty features are shifted by
0.001 to 0.010 standard deviations, which straddles the detection limit at 1M rows.

* ``loopml sketch check``: the production path: the reference sketch is built once per model version
  (timed apart), a check sketches the current window (one sort per column) and tests.
* ``loopml monitor check``: what the monitor's drift check runs, HTML report included: with the
  reference sketch cached (every check after a model version's first), and built in the call.
* ``dask``: the current window as 8 Parquet partitions, sketched by a ``distributed.LocalCluster``
  of 1 and 2 single-threaded worker processes (reading included), merged, tested.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS, FEATURES, PARTITIONS, ALPHA, REPEATS = 1_000_000, 50, 8, 0.01, 3
SHIFTED = {f"f{i}": 0.001 * (k + 1) for k, i in enumerate(range(0, FEATURES, 5))}  # f0: 0.001 .. f45: 0.010


def write_data(root: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(FEATURES)]
    pd.DataFrame({n: rng.normal(0, 1, ROWS) for n in names}).to_parquet(root / "reference.parquet")
    current = pd.DataFrame({n: rng.normal(SHIFTED.get(n, 0.0), 1, ROWS) for n in names})
    current.to_parquet(root / "current.parquet")
    for i, part in enumerate(np.array_split(np.arange(ROWS), PARTITIONS)):
        current.iloc[part].to_parquet(root / f"current-{i}.parquet")


def holm_flags(p_values: dict[str, float]) -> list[str]:
    from loopml.drift import holm

    names = list(p_values)
    adjusted = holm([p_values[n] for n in names])
    return sorted((n for n, a in zip(names, adjusted, strict=True) if a < ALPHA), key=lambda n: int(n[1:]))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_contender(name: str, root: Path) -> dict:
    """One contender in this (fresh) process: data read untimed, then the check timed."""
    import pandas as pd
    import scipy.special
    import scipy.stats  # noqa: F401

    from loopml import drift, sketches

    if name == "loopml reference sketch":  # once per model version, stored beside the model
        reference = pd.read_parquet(root / "reference.parquet")
        started = time.perf_counter()
        data = sketches.sketch_frame(reference, numeric=list(reference.columns), categorical=[]).to_bytes()
        (root / "reference.sketch.npz").write_bytes(data)
        return {"seconds": round(time.perf_counter() - started, 3), "peak_rss_mib": round(peak_rss_mib()),
                "bytes": len(data)}
    current = pd.read_parquet(root / "current.parquet")
    names = list(current.columns)
    cached = name in ("loopml sketch check", "loopml monitor check, reference sketch cached")
    reference = None if cached else pd.read_parquet(root / "reference.parquet")
    extra: dict = {}

    def check() -> dict[str, float]:
        if name in ("loopml sketch check", "loopml monitor check, reference sketch cached",
                    "loopml monitor check, reference sketch built"):
            if name == "loopml monitor check, reference sketch built":  # a model version's first check
                ref_sketch = sketches.sketch_frame(reference, numeric=names, categorical=[])
            else:  # what the monitor does afterwards: the reference sketch stored beside the model
                ref_sketch = sketches.WindowSketch.from_bytes((root / "reference.sketch.npz").read_bytes())
            cur_sketch = sketches.sketch_frame(current, numeric=names, categorical=[], edges=ref_sketch.edges)
            report = drift.drift_from_sketches(ref_sketch, cur_sketch, alpha=ALPHA, min_samples=200)
            if name != "loopml sketch check":  # the monitor also renders the HTML report with its plots
                extra["html_bytes"] = len(drift.render_html(report, ref_sketch, cur_sketch))
            extra["max_statistic_error"] = max(f.statistic_error for f in report.features)
            return {f.feature: f.p_value for f in report.features}
        if name == "loopml exact":
            report = drift.detect_drift(reference, current, numeric=names, categorical=[], alpha=ALPHA,
                                        min_samples=200, exact_up_to=10**12)
            return {f.feature: f.p_value for f in report.features}
        if name == "scipy ks_2samp per column":
            from scipy import stats

            return {n: float(stats.ks_2samp(reference[n].to_numpy(), current[n].to_numpy(), method="asymp").pvalue)
                    for n in names}
        raise SystemExit(f"unknown contender {name}")

    times = []
    for _ in range(REPEATS):  # best of REPEATS, the same for every contender in this file
        started = time.perf_counter()
        p_values = check()
        times.append(time.perf_counter() - started)
    seconds = min(times)
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(peak_rss_mib()), "rows": ROWS,
            "flagged": holm_flags(p_values), **extra}


EVIDENTLY = """
import json, sys, time
import pandas as pd
from evidently import DataDefinition, Dataset, Report, __version__
from evidently.presets import DataDriftPreset
root, rows = sys.argv[1], int(sys.argv[2])
reference = pd.read_parquet(root + "/reference.parquet").iloc[:rows]
current = pd.read_parquet(root + "/current.parquet").iloc[:rows]
definition = DataDefinition(numerical_columns=list(reference.columns))
started = time.perf_counter()
result = Report([DataDriftPreset(method="ks")]).run(Dataset.from_pandas(current, data_definition=definition),
                                                     Dataset.from_pandas(reference, data_definition=definition))
seconds = time.perf_counter() - started
p = {m["config"]["column"]: float(m["value"]) for m in result.dict()["metrics"] if "column" in m["config"]}
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"seconds": round(seconds, 3), "rows": rows, "version": __version__, "p_values": p,
                  "peak_rss_mib": round(hwm / 1024)}))
"""


def run_evidently(python: str, root: Path, rows: int) -> dict:
    out = subprocess.run([python, "-c", EVIDENTLY, str(root), str(rows)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["flagged"] = holm_flags(result.pop("p_values"))
    return result


def run_dask(root: Path, workers: int) -> dict:
    """Sketch the partitions on a LocalCluster of ``workers`` processes, merge, test."""
    import pandas as pd
    from distributed import Client, LocalCluster

    from loopml import drift, sketches

    reference = pd.read_parquet(root / "reference.parquet")
    names = list(reference.columns)
    ref_sketch = sketches.sketch_frame(reference, numeric=names, categorical=[])
    del reference

    def sketch_partition(path: str, edges: dict) -> bytes:
        frame = pd.read_parquet(path)
        return sketches.sketch_frame(frame, numeric=list(edges), categorical=[], edges=edges).to_bytes()

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        edges = client.scatter(ref_sketch.edges, broadcast=True)
        client.submit(len, [1]).result()  # workers up before the clock starts
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            parts = client.map(sketch_partition, [str(root / f"current-{i}.parquet") for i in range(PARTITIONS)],
                               edges=edges, pure=False)
            merged = sketches.merge_all(sketches.WindowSketch.from_bytes(b) for b in client.gather(parts))
            report = drift.drift_from_sketches(ref_sketch, merged, alpha=ALPHA, min_samples=200)
            times.append(time.perf_counter() - started)
        seconds = min(times)
    return {"seconds": round(seconds, 3), "workers": workers, "partitions": PARTITIONS,
            "flagged": holm_flags({f.feature: f.p_value for f in report.features})}


def in_fresh_process(name: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--contender", name, "--root", str(root)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender")
    parser.add_argument("--root")
    parser.add_argument("--evidently-rows", type=int, default=100_000)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args.contender, Path(args.root))))
        return
    import scipy

    results: dict = {"rows": ROWS, "features": FEATURES, "shifted": SHIFTED, "alpha_holm": ALPHA, "contenders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root)
        for name in ("loopml reference sketch", "loopml sketch check", "loopml monitor check, reference sketch cached",
                     "loopml monitor check, reference sketch built", "loopml exact", "scipy ks_2samp per column"):
            results["contenders"][name] = in_fresh_process(name, root)
            print(name, results["contenders"][name], flush=True)
        if os.environ.get("EVIDENTLY_PYTHON"):
            name = f"evidently DataDriftPreset(ks) at {args.evidently_rows:,} rows"
            results["contenders"][name] = run_evidently(os.environ["EVIDENTLY_PYTHON"], root, args.evidently_rows)
            print(name, results["contenders"][name], flush=True)
            if args.evidently_rows != ROWS:  # the same row count for loopml, to compare speed like with like
                small = in_fresh_process_rows(root, args.evidently_rows)
                results["contenders"][f"loopml sketch check at {args.evidently_rows:,} rows"] = small
        for workers in (1, 2):
            results["contenders"][f"dask, {workers} worker(s)"] = run_dask(root, workers)
            print(workers, results["contenders"][f"dask, {workers} worker(s)"], flush=True)
    c = results["contenders"]
    sketch = c["loopml sketch check"]
    results["summary"] = {
        "sketch_vs_scipy_speedup": round(c["scipy ks_2samp per column"]["seconds"] / sketch["seconds"], 1),
        "monitor_cached_vs_scipy_speedup": round(c["scipy ks_2samp per column"]["seconds"]
                                                 / c["loopml monitor check, reference sketch cached"]["seconds"], 1),
        "monitor_built_vs_scipy_speedup": round(c["scipy ks_2samp per column"]["seconds"]
                                                / c["loopml monitor check, reference sketch built"]["seconds"], 1),
        "sketch_vs_exact_speedup": round(c["loopml exact"]["seconds"] / sketch["seconds"], 1),
        "same_flags_as_scipy": sketch["flagged"] == c["scipy ks_2samp per column"]["flagged"],
        "same_flags_as_exact": sketch["flagged"] == c["loopml exact"]["flagged"],
        "dask_speedup_2_workers": round(c["dask, 1 worker(s)"]["seconds"] / c["dask, 2 worker(s)"]["seconds"], 2),
    }
    evidently = [k for k in c if k.startswith("evidently")]
    if evidently:
        ev = c[evidently[0]]
        ours = c.get(f"loopml sketch check at {ev['rows']:,} rows", sketch)
        results["summary"].update({
            "sketch_vs_evidently_speedup_same_rows": round(ev["seconds"] / ours["seconds"], 1),
            "sketch_vs_evidently_memory_same_rows": round(ours["peak_rss_mib"] / ev["peak_rss_mib"], 2),
            "same_flags_as_evidently_same_rows": ours["flagged"] == ev["flagged"],
        })
    results["versions"] = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    out = Path(__file__).parent / "results" / "drift.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


def in_fresh_process_rows(root: Path, rows: int) -> dict:
    """The sketch check on the first ``rows`` rows (the size Evidently ran at), in its own process."""
    import pandas as pd

    small = root / f"small-{rows}"
    small.mkdir(exist_ok=True)
    for name in ("reference", "current"):
        pd.read_parquet(root / f"{name}.parquet").iloc[:rows].to_parquet(small / f"{name}.parquet")
    env = {**os.environ, "LOOPML_BENCH_ROWS": str(rows)}
    subprocess.run([sys.executable, __file__, "--contender", "loopml reference sketch", "--root", str(small)],
                   check=True, capture_output=True, env=env)
    out = subprocess.run([sys.executable, __file__, "--contender", "loopml sketch check", "--root", str(small)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    ROWS = int(os.environ.get("LOOPML_BENCH_ROWS", ROWS))
    main()
