"""Serving throughput and latency: loopml's server vs a plain ASGI app vs TorchServe, in one run.

    .venv/bin/python benchmarks/bench_serving.py      # writes benchmarks/results/serving.json (needs wrk, Java)

The same churn artifact, the same one-row JSON request, `wrk -t1` at 1, 16 and 64 connections for
DURATION seconds per point, REPEATS rounds with the targets interleaved (medians reported).
Targets: loopml's server (prediction log on, and off), a minimal Starlette/uvicorn app scoring with
the same loader (no checks, metrics or log), TorchServe through loopml's plugin at batch size 1, and
TorchServe with its server-side batching (batch 16, 5 ms) at 64 connections. Also: cold start of
loopml's server (process start to first answer, and the part after imports) and of TorchServe.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
CONNECTIONS = (1, 16, 64)
ROW = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}


def artifact(folder: Path) -> Path:
    from loopml.examples import churn
    from loopml.features import FeatureView, point_in_time_join
    from loopml.trainers import train_model

    view = FeatureView("activity", "customer_id", "event_timestamp",
                       ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
    data = churn.generate(2000, seed=0)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, view).dropna()
    path = folder / "model.pt2"
    path.write_bytes(train_model(frame, "churned", view.numeric, view.categorical, epochs=3).artifact)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, token: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps({"rows": [ROW]}).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def wrk(url: str, connections: int, token: str | None, folder: Path) -> dict[str, float]:
    script = folder / "post.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = '{json.dumps({'rows': [ROW]})}'\n{auth}")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=DURATION + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": int(errors.group(1)) if errors else 0, "timeouts": int(timeouts.group(1)) if timeouts else 0}


class Target:
    def __init__(self, kind: str, model: Path, folder: Path) -> None:
        self.kind, self.model, self.folder = kind, model, folder
        self.proc: subprocess.Popen | None = None
        self.backend = None
        self.token: str | None = None

    def start(self) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.kind.startswith("torchserve"):
            from datetime import datetime as dt

            from loopml.context import BackendContext
            from loopml.records import ModelVersion
            from loopml_torchserve import TorchServeOptions, _factory

            batch = 16 if self.kind == "torchserve-batched" else 1
            home = Path(tempfile.mkdtemp(dir=self.folder))
            self.backend = _factory(TorchServeOptions(batch_size=batch, max_batch_delay_ms=5),
                                    BackendContext("bench", home, home / ".loopml"))
            import hashlib

            sha = hashlib.sha256(self.model.read_bytes()).hexdigest()
            self.backend.deploy(ModelVersion("bench", 1, "approved", "k", sha, dt.now(UTC), "bench"), self.model)
            self.token = self.backend.inference_token
            self.url = f"{self.backend.inference_url}/predictions/bench/1"
        else:
            port = free_port()
            self.url = f"http://127.0.0.1:{port}/predict"
            self.proc = subprocess.Popen([sys.executable, str(HERE / "serve_targets.py"), self.kind, str(self.model),
                                          str(port)], stdout=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline()
            assert line.startswith("READY"), line
        while True:
            try:
                if post(self.url, self.token) == 200:
                    break
            except OSError:
                time.sleep(0.01)
        first_answer = time.perf_counter() - t0
        info = {"first_answer_s": first_answer}
        if self.proc is not None:
            info.update({k: float(v.rstrip("s")) for k, v in re.findall(r"(\w+)=([\d.]+s)", line)})
        return info

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.backend is not None:
            self.backend.stop()


def main() -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="loopml-bench-"))
    model = artifact(folder)
    plan = {"plain": CONNECTIONS, "loopml": CONNECTIONS, "loopml-nolog": (16,), "torchserve": CONNECTIONS,
            "torchserve-batched": (64,)}
    runs: dict[str, dict[int, list[dict[str, float]]]] = {k: {c: [] for c in v} for k, v in plan.items()}
    starts: dict[str, list[dict[str, float]]] = {k: [] for k in plan}
    for round_ in range(REPEATS):
        order = list(plan) if round_ % 2 == 0 else list(reversed(plan))
        for kind in order:
            target = Target(kind, model, folder)
            starts[kind].append(target.start())
            try:
                for c in plan[kind]:
                    runs[kind][c].append(wrk(target.url, c, target.token, folder))
                    print(kind, c, runs[kind][c][-1], flush=True)
            finally:
                target.stop()

    def med(kind: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind][c])

    table = {kind: {str(c): {k: med(kind, c, k) for k in ("rps", "p50_ms", "p99_ms", "non_2xx", "timeouts")}
                    for c in cs} for kind, cs in plan.items()}
    ratios = {
        "loopml_vs_plain_asgi_1_conn": med("loopml", 1, "rps") / med("plain", 1, "rps"),
        "loopml_vs_plain_asgi_16_conn": med("loopml", 16, "rps") / med("plain", 16, "rps"),
        "loopml_vs_torchserve_bs1_1_conn": med("loopml", 1, "rps") / med("torchserve", 1, "rps"),
        "loopml_vs_torchserve_batched_64_conn": med("loopml", 64, "rps") / med("torchserve-batched", 64, "rps"),
        "logging_cost_16_conn": 1 - med("loopml", 16, "rps") / med("loopml-nolog", 16, "rps"),
    }
    cold = {kind: {k: statistics.median(s[k] for s in starts[kind]) for k in starts[kind][0]} for kind in plan}
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "duration_s": DURATION, "repeats": REPEATS, "table": table, "ratios": ratios, "cold_start": cold}
    out = HERE / "results" / "serving.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "cold_start": cold}, indent=2))
    return result


if __name__ == "__main__":
    main()
