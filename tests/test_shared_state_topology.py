"""Beyond one machine: two server replicas and two monitors in separate processes, each with its own
project folder and home, sharing only an S3 server (moto_server) and a PostgreSQL registry.

Topology::

    replica A (loopml serve) ─┐                      ┌─ monitor 1 (python -c …)
                              ├─ S3: predictions/, ──┤
    replica B (loopml serve) ─┘   state/, reports/   └─ monitor 2
                 └──────────── PostgreSQL registry ───────────┘

What it shows: every answered row reaches the store and is read by exactly one monitor run, even
when two monitors run at once; a drift alert is raised once across monitors (shared cooldown).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from servers import moto_server, postgres_server, start, stop

from loopml.context import Workspace
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import train_model

pytestmark = pytest.mark.slow
VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
BUCKET = "shared"
MONITOR = """
import json, sys
from loopml.context import Workspace
from loopml.stages.drift_check import check_drift, drift_reference
from loopml.stages.monitoring import prediction_window
from loopml.stages.project import production_model
ws = Workspace.open(sys.argv[1])
since = None if sys.argv[2] == "cursor" else float(sys.argv[2])
window = prediction_window(ws, "churn", since)
model = production_model(ws, "churn")
report, key, alert = check_drift(ws, drift_reference(ws, model), window.inputs, "training inputs",
                                      production_version=model.version, outputs=window.outputs, window=window.span)
print(json.dumps({"ids": [r["request_id"] for r in window.records], "alert": alert, "reason": report.reason,
                  "report": key}))
"""


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.1)


def machine(root: Path, name: str, endpoint: str, database: str) -> Path:
    """A project folder of its own (its own .loopml home): only S3 and PostgreSQL are shared."""
    folder = root / name
    config = churn.init_project(folder, n_customers=200, seed=1)
    text = config.read_text()
    text = re.sub(r'\[storage\]\nuri = "artifacts"[^\n]*\n', "", text)
    text += (f'\n[storage]\nuri = "s3://{BUCKET}/loopml"\n[storage.options]\nendpoint_url = "{endpoint}"\n'
             'region = "us-east-1"\naccess_key_id = "AKIATEST"\nsecret_access_key = "x"\n'
             f'\n[registry]\nbackend = "postgres"\n[registry.options]\nurl = "{database}"\n'
             '\n[serving]\nbackend = "builtin"\n[serving.options]\nlog_to_store = true\nlog_segment_seconds = 0.5\n')
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("machines")
    with moto_server(root) as endpoint, postgres_server() as database:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
        configs = {name: machine(root, name, endpoint, database) for name in ("trainer", "a", "b", "m1", "m2")}
        ws = Workspace.open(configs["trainer"])
        data = churn.generate(600, seed=5)
        frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
        trained = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=2, seed=1)
        info = ws.store.put("models/churn/shared-1/model.pt2", trained.artifact)
        buf = io.BytesIO()
        frame[[*VIEW.numeric, *VIEW.categorical]].to_parquet(buf)
        ws.store.put("models/churn/shared-1/reference.parquet", buf.getvalue())
        ws.registry.register("churn", artifact_key=info.key, artifact_sha256=info.sha256, status="approved",
                             actor="test", lineage={"entity": "customer_id"})
        ws.registry.set_alias("churn", "production", 1, expected=None, actor="test", reason="first")
        yield {**configs, "root": root}


def serve(config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = start([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                  "--config", str(config)], log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 180, "server start")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, re.search(r"on (http://\S+)", log.read_text()).group(1)


def monitor(config: Path, since: str = "cursor") -> dict:
    done = subprocess.run([sys.executable, "-c", MONITOR, str(config), since], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PREFECT_HOME": str(config.parent / "prefect")})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def logged_ids(config: Path) -> set[str]:
    from loopml.predlog import read_store_segments, store_segments

    ws = Workspace.open(config)
    return {r["request_id"] for r in read_store_segments(ws.store, store_segments(ws.store, "churn"))}


_sequence = iter(range(1, 10**9))


def send(url: str, rows: list[dict], n: int) -> set[str]:
    """``n`` requests of ``rows``, each with its own X-Request-ID; returns the ids."""
    ids = set()
    for _ in range(n):
        rid = f"req-{next(_sequence)}"
        request = urllib.request.Request(url + "/predict", data=json.dumps({"rows": rows}).encode(),
                                         headers={"Content-Type": "application/json", "X-Request-ID": rid})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and response.headers["X-Request-ID"] == rid
        ids.add(rid)
    return ids


def test_two_replicas_and_two_monitors_share_only_s3_and_postgres(shared: dict[str, Path]) -> None:
    root = shared["root"]
    (a, url_a), (b, url_b) = serve(shared["a"], root / "a.log"), serve(shared["b"], root / "b.log")
    try:
        sent = send(url_a, [GOOD], 30) | send(url_b, [GOOD], 20)
        wait_for(lambda: sent <= logged_ids(shared["m1"]), 120, "both replicas' rows in S3")
        # Two monitors at once, from two folders: together they read every row exactly once.
        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(monitor, [shared["m1"], shared["m2"]])
        read = first["ids"] + second["ids"]
        assert sorted(read) == sorted(sent), (len(read), len(sent))
        local = {p.name for p in (root / "m1" / ".loopml").rglob("*")}
        assert not any("cursor" in name for name in local)  # the cursor lives in S3, not on this disk
        # A canary judge on a third machine sees both replicas' answers too (read incrementally).
        from loopml.canary import CanaryWindow

        window = CanaryWindow(Workspace.open(shared["m2"]), "churn", since=0.0)
        assert len(window.read()) == len(sent) and len(window.read()) == len(sent)
        # New traffic on one replica reaches whichever monitor runs next, and only that.
        more = send(url_b, [GOOD], 10)
        wait_for(lambda: more <= logged_ids(shared["m1"]), 120, "new rows in S3")
        assert set(monitor(shared["m2"])["ids"]) == more
        assert monitor(shared["m1"])["ids"] == []
        # Drift seen by two monitors: one alert, the other suppressed by the shared cooldown.
        drifted = send(url_a, [{**GOOD, "monthly_charges": 900.0, "support_calls": 9}] * 20, 20)
        wait_for(lambda: drifted <= logged_ids(shared["m1"]), 120, "drifted rows in S3")
        alerting = monitor(shared["m1"])
        assert alerting["alert"], alerting["reason"]
        since = str(time.time() - 3600)
        quiet = monitor(shared["m2"], since)  # sees the same drift, from another machine
        assert not quiet["alert"] and "suppressed" in quiet["reason"], quiet["reason"]
        s3 = Workspace.open(shared["m2"]).store
        assert s3.exists(alerting["report"]) and s3.exists(quiet["report"])  # reports in S3 too
        local = {p.name for m in ("m1", "m2") for p in (root / m / ".loopml").rglob("*")}
        assert not any("drift-alert" in name for name in local)  # so is the alert state
    finally:
        stop(a)
        stop(b)
