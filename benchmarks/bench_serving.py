"""Serving as users run it: `loopml serve` as a process on a `loopml init` project, against its peers.

    .venv/bin/python benchmarks/bench_serving.py      # writes benchmarks/results/serving.json (needs wrk, Java)

Every target runs at once, each in a process of its own, and gets a discarded warm-up window of
WARMUP seconds at 16 connections (TorchServe's JIT and batching take a while to reach their pace).
Then, REPEATS rounds (3): for each connection count, `wrk -t1` runs DURATION seconds against each
target, back to back (the order reversed every other round; `loopml serve`'s entity-id window right
beside its full-row window), with one-row JSON requests. Figures
are medians over rounds; a ratio is the median of the rounds' ratios, each taken between two
windows measured back to back (on a shared machine, minutes apart would measure the neighbours):

- ``loopml``: `loopml serve churn@production` on a project made by `loopml init` and `loopml run`:
  online features configured, prediction log on, the token check off (loopback). Requests carry
  every feature (``row``) or only the customer id (``entity``: features from the online store);
  ``row-lua`` sends the full row through a per-request Lua function, as the entity script must.
- ``loopml-nolog``: what `loopml serve` builds, with the prediction log taken out.
- ``plain``: a minimal Starlette/uvicorn app scoring the same artifact with the same loader.
- ``torchserve-batched``: TorchServe 0.12 through loopml's plugin, with its batching (16, 5 ms).
- ``torchserve``: the same at batch size 1.
Also the start of each: process start to first answer (once, while the others start too).
"""

from __future__ import annotations

import contextlib
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
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
WARMUP = int(os.environ.get("BENCH_WARMUP_SECONDS", "10"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
ROW = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
PLAN: dict[str, tuple[tuple[str, int], ...]] = {
    "plain": (("row", 1), ("row", 16), ("row", 64)),
    "loopml": (("row", 1), ("row", 16), ("row", 64), ("entity", 1), ("entity", 16), ("row-lua", 16)),
    "loopml-nolog": (("row", 16),),
    "torchserve-batched": (("row", 16), ("row", 64)),
    "torchserve": (("row", 1), ("row", 16)),
}
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "WANDB_MODE": "offline"}


def project(folder: Path) -> Path:
    """A `loopml init` project with a production model, made through the CLI; its loopml.toml."""
    root = folder / "project"
    env = {**ENV, "PREFECT_HOME": str(folder / "prefect")}
    subprocess.run([str(BIN / "loopml"), "init", str(root)], check=True, env=env, capture_output=True)
    subprocess.run([str(BIN / "loopml"), "run"], check=True, env=env, cwd=root, capture_output=True)
    return root / "loopml.toml"


def production_artifact(config: Path, folder: Path) -> tuple[Path, str]:
    from loopml.context import Workspace

    ws = Workspace.open(config)
    version = ws.registry.get("churn", alias="production")
    path = folder / "model.pt2"
    path.write_bytes(ws.store.get(version.artifact_key))
    return path, version.artifact_sha256


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, token: str | None = None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def script(folder: Path, request: str, token: str | None, ids: list[int]) -> Path:
    """A wrk script: the full row, or entity ids cycling through the customers the store holds."""
    path = folder / f"{request}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    head = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n{auth}'
    if request == "row":
        path.write_text(head + f"wrk.body = '{json.dumps({'rows': [ROW]})}'\n")
    elif request == "row-lua":  # the full row, built per request like the entity script's (same client cost)
        path.write_text(head + "local n = 0\nrequest = function()\n  n = n + 1\n"
                        f"  return wrk.format(nil, nil, nil, '{json.dumps({'rows': [ROW]})}')\nend\n")
    else:
        path.write_text(head + f"local ids = {{{', '.join(map(str, ids))}}}\nlocal n = 0\n"
                        "request = function()\n  n = n % #ids + 1\n"
                        '  return wrk.format(nil, nil, nil, \'{"rows": [{"customer_id": \' .. ids[n] .. \'}]}\')\n'
                        "end\n")
    return path


def online_ids(url: str) -> list[int]:
    """The generated customers (1..4000) that have online features (active within the view's TTL)."""
    found = []
    for customer in range(1, 4001):
        try:
            post(url, {"rows": [{"customer_id": customer}]})
            found.append(customer)
        except urllib.error.HTTPError:
            pass
    return found


def wrk(url: str, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    answered = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"), "requests": int(answered.group(1)) if answered else 0,
            "non_2xx": int(errors.group(1)) if errors else 0, "timeouts": int(timeouts.group(1)) if timeouts else 0}


class Target:
    """One server under test, started in a process of its own."""

    def __init__(self, kind: str, config: Path, artifact: Path, sha: str, folder: Path) -> None:
        self.kind, self.config, self.artifact, self.sha, self.folder = kind, config, artifact, sha, folder
        self.proc: subprocess.Popen | None = None
        self.backend = None
        self.token: str | None = None

    def start(self) -> float:
        """Seconds from process start to the first answer."""
        t0 = time.perf_counter()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/predict"
        if self.kind.startswith("torchserve"):
            from loopml.context import BackendContext
            from loopml.records import ModelVersion
            from loopml_torchserve import TorchServeOptions, _factory

            batch = 16 if self.kind == "torchserve-batched" else 1
            home = Path(tempfile.mkdtemp(dir=self.folder))
            self.backend = _factory(TorchServeOptions(batch_size=batch, max_batch_delay_ms=5),
                                    BackendContext("bench", home, home / ".loopml"))
            self.backend.deploy(ModelVersion("churn", 1, "approved", "k", self.sha, datetime.now(UTC), "bench"),
                                self.artifact)
            self.token = self.backend.inference_token
            self.url = f"{self.backend.inference_url}/predictions/churn/1"
        elif self.kind == "loopml":
            self.proc = subprocess.Popen([str(BIN / "loopml"), "serve", "churn@production", "--port", str(port)],
                                         cwd=self.config.parent, env=ENV, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        else:
            path = self.artifact if self.kind == "plain" else self.config
            self.proc = subprocess.Popen([sys.executable, str(HERE / "serve_targets.py"), self.kind, str(path),
                                          str(port)], env=ENV, stdout=subprocess.DEVNULL)
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited with {self.proc.returncode} before answering")
            try:
                if post(self.url, {"rows": [ROW]}, self.token) == 200:
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.01)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server's process has used so far; None for TorchServe (a JVM
        and its workers). Per request, it is what a window cost the server, whatever the neighbours did."""
        if self.proc is None:
            return None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
        if self.backend is not None:
            self.backend.stop()


def main() -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="loopml-bench-"))
    config = project(folder)
    artifact, sha = production_artifact(config, folder)
    targets = {kind: Target(kind, config, artifact, sha, folder) for kind in PLAN}
    first_answer: dict[str, float] = {}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {f"{r}@{c}": [] for r, c in v} for k, v in PLAN.items()}
    try:
        for kind, target in targets.items():  # all up at once: each point's contenders run back to back
            first_answer[kind] = target.start()
        ids = online_ids(targets["loopml"].url)
        lua: dict[str, dict[str, Path]] = {}
        for kind, target in targets.items():  # the token differs per target (TorchServe has its own)
            (folder / kind).mkdir()
            lua[kind] = {r: script(folder / kind, r, target.token, ids) for r in ("row", "entity", "row-lua")}
        for kind, target in targets.items():  # discarded: every target reaches its pace first
            wrk(target.url, 16, WARMUP, lua[kind]["row"])
        connections = sorted({c for plan in PLAN.values() for _, c in plan})
        for round_ in range(REPEATS):
            for c in connections:
                kinds = [k for k in PLAN if ("row", c) in PLAN[k]]
                for kind in kinds if round_ % 2 == 0 else reversed(kinds):
                    # a target's entity-id point right after its full-row point: the pair is compared
                    for request in ("row", "row-lua", "entity") if round_ % 2 == 0 else ("entity", "row-lua", "row"):
                        if (request, c) in PLAN[kind]:
                            point = f"{request}@{c}"
                            before = targets[kind].cpu_seconds()
                            window = wrk(targets[kind].url, c, DURATION, lua[kind][request])
                            if before is not None and window["requests"]:
                                spent = targets[kind].cpu_seconds() - before
                                window["cpu_us_per_request"] = spent * 1e6 / window["requests"]
                            runs[kind][point].append(window)
                            print(round_, kind, point, runs[kind][point][-1], flush=True)
    finally:
        for target in targets.values():
            target.stop()

    def med(kind: str, point: str, key: str = "rps") -> float:
        return statistics.median(r[key] for r in runs[kind][point])

    def paired(a: str, a_point: str, b: str, b_point: str, key: str = "rps") -> float:
        """The median over rounds of a/b, each round's two measured back to back."""
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a][a_point], runs[b][b_point], strict=True))

    def cpu(kind: str, point: str) -> dict[str, float]:
        values = [r["cpu_us_per_request"] for r in runs[kind][point] if "cpu_us_per_request" in r]
        return {"cpu_us_per_request": statistics.median(values)} if values else {}

    table = {kind: {point: {k: med(kind, point, k) for k in ("rps", "p50_ms", "p99_ms", "non_2xx", "timeouts")}
                    | cpu(kind, point)
                    | {"runs_rps": [r["rps"] for r in runs[kind][point]]} for point in points}
             for kind, points in runs.items()}
    ratios = {
        "loopml_vs_plain_1": paired("loopml", "row@1", "plain", "row@1"),
        "loopml_vs_plain_16": paired("loopml", "row@16", "plain", "row@16"),
        "loopml_vs_plain_64": paired("loopml", "row@64", "plain", "row@64"),
        "loopml_vs_torchserve_batched_16": paired("loopml", "row@16", "torchserve-batched", "row@16"),
        "loopml_vs_torchserve_batched_64": paired("loopml", "row@64", "torchserve-batched", "row@64"),
        "loopml_vs_torchserve_1": paired("loopml", "row@1", "torchserve", "row@1"),
        "loopml_vs_torchserve_16": paired("loopml", "row@16", "torchserve", "row@16"),
        "log_cost_16": 1 - paired("loopml", "row@16", "loopml-nolog", "row@16"),
        # the same cost as server CPU per request (robust to a noisy machine; see cpu_seconds)
        "log_cost_cpu_16": paired("loopml", "row@16", "loopml-nolog", "row@16", "cpu_us_per_request") - 1,
        "loopml_vs_plain_cpu_16": paired("loopml", "row@16", "plain", "row@16", "cpu_us_per_request"),
        "entity_vs_row_p50_1": paired("loopml", "entity@1", "loopml", "row@1", "p50_ms"),
        # wrk builds each entity request in Lua (the ids cycle), which costs the client ~10-15% at 16
        # connections on 2 cores: the entity window is compared with full rows sent the same way
        "entity_vs_row_rps_16": paired("loopml", "row-lua@16", "loopml", "entity@16"),
    }
    result = {"benchmark": "serving", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "duration_s": DURATION, "warmup_s": WARMUP, "repeats": REPEATS, "table": table, "ratios": ratios,
              "first_answer_s": first_answer}
    (HERE / "results" / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "first_answer_s": result["first_answer_s"]}, indent=2))
    with contextlib.suppress(OSError):
        shutil.rmtree(folder)
    return result


if __name__ == "__main__":
    main()
