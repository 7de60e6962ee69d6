"""Metric logging throughput: loopml's MLflow tracker against MLflow's own client, same store.

    .venv/bin/python benchmarks/bench_tracking.py       # writes benchmarks/results/tracking.json

Each side logs the same 5,000 points (5 metrics x 1,000 steps) to a fresh run on the same SQLite
tracking store: MLflow's ``MlflowClient.log_batch`` in batches of 1,000 (the fastest MLflow offers),
MLflow's ``log_metric`` one point per call (what a naive integration does), and loopml's tracker
through its ``log_metrics`` verb, one call per step, as the training loop calls it. Runs are
interleaved; the median of the repetitions is reported, in points per second, with end_run included
(loopml flushes its buffer there).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

METRICS, STEPS, REPEATS = 5, 1000, 3


def loopml_side(tracker) -> float:
    from loopml.records import RunInfo

    run = RunInfo(uuid.uuid4().hex, "bench", "bench")
    tracker.start_run(run)
    started = time.perf_counter()
    for step in range(STEPS):
        tracker.log_metrics(run.run_id, {f"m{i}": step * 0.001 + i for i in range(METRICS)}, step=step)
    tracker.end_run(run.run_id)
    return METRICS * STEPS / (time.perf_counter() - started)


def mlflow_batch(client, experiment_id: str) -> float:
    from mlflow.entities import Metric

    run = client.create_run(experiment_id)
    now = int(time.time() * 1000)
    points = [Metric(f"m{i}", step * 0.001 + i, now, step) for step in range(STEPS) for i in range(METRICS)]
    started = time.perf_counter()
    for i in range(0, len(points), 1000):
        client.log_batch(run.info.run_id, metrics=points[i:i + 1000])
    client.set_terminated(run.info.run_id)
    return len(points) / (time.perf_counter() - started)


def mlflow_per_point(client, experiment_id: str, steps: int = 100) -> float:
    run = client.create_run(experiment_id)
    started = time.perf_counter()
    for step in range(steps):
        for i in range(METRICS):
            client.log_metric(run.info.run_id, f"m{i}", step * 0.001 + i, step=step)
    client.set_terminated(run.info.run_id)
    return METRICS * steps / (time.perf_counter() - started)


def main() -> None:
    import mlflow
    from mlflow import MlflowClient

    from loopml.context import BackendContext
    from loopml_mlflow import MlflowOptions, _factory

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        tracker = _factory(MlflowOptions(), BackendContext("bench", home, home))
        client = MlflowClient(tracker.tracking_uri)
        experiment_id = client.create_experiment("bench-mlflow")
        results: dict[str, list[float]] = {"loopml log_metrics": [], "mlflow log_batch": [],
                                           "mlflow log_metric per point": []}
        for _ in range(REPEATS):
            results["loopml log_metrics"].append(loopml_side(tracker))
            results["mlflow log_batch"].append(mlflow_batch(client, experiment_id))
            results["mlflow log_metric per point"].append(mlflow_per_point(client, experiment_id))
    summary = {name: round(statistics.median(v)) for name, v in results.items()}
    out = {"points_per_second": summary, "runs": results, "metrics": METRICS, "steps": STEPS,
           "repeats": REPEATS, "mlflow": mlflow.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "store": "sqlite"}
    path = Path(__file__).parent / "results" / "tracking.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, value in summary.items():
        print(f"{name:32s} {value:>8,} points/s")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
