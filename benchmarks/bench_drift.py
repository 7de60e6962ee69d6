"""Drift engine throughput at a million rows, side by side with SciPy in the same run.

    .venv/bin/python benchmarks/bench_drift.py          # writes benchmarks/results/drift.json

Compares loopml.drift.ks_two_sample with scipy.stats.ks_2samp (asymptotic method, the same
statistic), and times a whole detect_drift call over 3 numeric + 2 categorical features.
"""

from __future__ import annotations

import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from scipy import stats

from loopml.drift import detect_drift, ks_two_sample

ROWS = 1_000_000
REPEATS = 3


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, ROWS)
    cur = rng.normal(0.01, 1, ROWS)
    loopml_ks = best_of(lambda: ks_two_sample(ref, cur))
    scipy_ks = best_of(lambda: stats.ks_2samp(ref, cur, method="asymp"))
    d_ours, _ = ks_two_sample(ref, cur)
    d_scipy = stats.ks_2samp(ref, cur, method="asymp").statistic

    def frame(n: int, shift: float) -> pd.DataFrame:
        return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.exponential(1, n),
                             "c": rng.poisson(2, n).astype(float),
                             "k": rng.choice(["x", "y", "z"], n), "r": rng.choice(list("abcdefgh"), n)})

    reference, current = frame(ROWS, 0), frame(ROWS, 0.01)
    run = lambda: detect_drift(reference, current, numeric=["a", "b", "c"], categorical=["k", "r"],  # noqa: E731
                               alpha=0.01, min_samples=200)
    full = best_of(run)
    result = {
        "rows_per_sample": ROWS,
        "ks_seconds": {"loopml": round(loopml_ks, 4), "scipy.stats.ks_2samp(asymp)": round(scipy_ks, 4)},
        "ks_statistic_equal": bool(abs(d_ours - d_scipy) < 1e-12),
        "detect_drift_5_features_seconds": round(full, 3),
        "detect_drift_rows_per_second": int(2 * ROWS * 5 / full),
        "detect_drift_peak_traced_mib": round(peak_mib(run), 1),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__},
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    out = Path(__file__).parent / "results" / "drift.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
