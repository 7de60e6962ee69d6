"""Soak: 100 hot swaps of the served version under 8 clients, on `loopml serve` as shipped.

    .venv/bin/python benchmarks/bench_soak.py     # writes benchmarks/results/soak.json and soak.svg

A project with two registered versions of churn; `loopml serve churn@production` runs as its own
process (as users run it) and follows the registry. Eight client threads post one-row requests
without pause. The benchmark moves ``production`` between v1 and v2 SWAPS times (compare-and-set,
as `loopml models promote` does), waits each time until every answer comes from the new version,
and then reads the server's resident memory (VmRSS). Reported: failed requests (any answer but
200, or a connection error), the RSS after every swap, and how far it drifts from the first swap
(target: within 10%), with the time each swap took to reach the clients.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
SWAPS = int(os.environ.get("SOAK_SWAPS", "100"))
CLIENTS = 8
ROW = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}


def project(folder: Path) -> Path:
    from loopml.context import Workspace
    from loopml.examples import churn
    from loopml.features import FeatureView, point_in_time_join
    from loopml.trainers import train_model

    view = FeatureView("activity", "customer_id", "event_timestamp",
                       ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
    config = churn.init_project(folder, n_customers=300, seed=3)
    ws = Workspace.open(config)
    data = churn.generate(600, seed=5)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, view).dropna()
    for seed in (1, 2):
        trained = train_model(frame, "churned", view.numeric, view.categorical, epochs=2, seed=seed)
        info = ws.store.put(f"models/churn/soak-{seed}/model.pt2", trained.artifact)
        ws.registry.register("churn", artifact_key=info.key, artifact_sha256=info.sha256, status="approved",
                             actor="bench", lineage={"entity": "customer_id"})
    ws.registry.set_alias("churn", "production", 1, expected=None, actor="bench", reason="first")
    return config


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def wait_until(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def svg(rss: list[float], first: float) -> str:
    """The RSS curve with the ±10% band around the first swap, as a small standalone SVG."""
    width, height, pad = 640, 240, 40
    top, bottom = max(max(rss), first * 1.1) * 1.02, min(min(rss), first * 0.9) * 0.98

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * i / max(1, len(rss) - 1)
        return x, pad + (height - 2 * pad) * (top - v) / (top - bottom)

    band = [xy(0, first * 1.1), xy(len(rss) - 1, first * 1.1), xy(len(rss) - 1, first * 0.9), xy(0, first * 0.9)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(rss)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="11"><rect width="100%" height="100%" fill="white"/>'
            f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in band)}" fill="#dbeafe"/>'
            f'<polyline points="{points}" fill="none" stroke="#1d4ed8" stroke-width="1.5"/>'
            f'<text x="{pad}" y="{pad - 12}">loopml serve RSS (MB) after each of {len(rss)} hot swaps; band: '
            f'first swap ±10%</text><text x="4" y="{xy(0, top)[1] + 4:.0f}">{top:.0f}</text>'
            f'<text x="4" y="{xy(0, bottom)[1]:.0f}">{bottom:.0f}</text>'
            f'<text x="{width - pad - 30}" y="{height - 8}">swap {len(rss)}</text></svg>')


def main() -> None:
    from loopml.context import Workspace
    from loopml.traffic import TrafficGenerator

    with tempfile.TemporaryDirectory() as tmp:
        config = project(Path(tmp) / "soak")
        ws = Workspace.open(config)
        log = Path(tmp) / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                                     "--poll-seconds", "0.2", "--config", str(config)], stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_until(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 180,
                       "server start")
            url = re.search(r"on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
            clients = [TrafficGenerator(url + "/predict", [ROW]).start() for _ in range(CLIENTS)]
            wait_until(lambda: all(c.versions[1] >= 20 for c in clients), 120, "traffic on v1")
            rss, swap_seconds, current = [], [], 1
            started = time.monotonic()
            for i in range(SWAPS):
                target = 2 if current == 1 else 1
                ws.registry.set_alias("churn", "production", target, expected=current, actor="bench",
                                      reason=f"soak swap {i + 1}")
                seen = [c.versions[target] for c in clients]
                swap_seconds.append(wait_until(
                    lambda t=target, s=seen: all(c.versions[t] >= n + 3 for c, n in zip(clients, s, strict=True)),
                    120, f"swap {i + 1} reaching every client"))
                current = target
                rss.append(round(rss_mb(proc.pid), 1))
                print(f"swap {i + 1:3d}: v{target}, {swap_seconds[-1]:.2f} s, RSS {rss[-1]:.0f} MB", flush=True)
            elapsed = time.monotonic() - started
            for c in clients:
                c.stop()
            sent, failed = sum(c.sent for c in clients), sum(c.failed for c in clients)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    first = rss[0]
    result = {
        "benchmark": "soak: hot swaps under load, `loopml serve` as a process",
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "swaps": SWAPS, "clients": CLIENTS,
        "requests": sent, "failed": failed, "seconds": round(elapsed, 1),
        "rss_mb": {"first_swap": first, "last_swap": rss[-1], "max": max(rss), "min": min(rss),
                   "max_drift_vs_first": round(max(abs(v - first) for v in rss) / first, 4), "curve": rss},
        "swap_seconds": {"median": sorted(swap_seconds)[len(swap_seconds) // 2], "max": max(swap_seconds)},
        "flat_within_10pct": max(abs(v - first) for v in rss) <= 0.1 * first, "target": "RSS within 10% of the "
        "first swap, 0 failed requests",
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / "soak.svg").write_text(svg(rss, first))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"} | {"rss_mb": {
        k: v for k, v in result["rss_mb"].items() if k != "curve"}}, indent=2))


if __name__ == "__main__":
    main()
