"""A replica killed with SIGKILL under load loses at most the answers of its last moments: the segment
it had open reaches the store when the next server starts in its folder (a restart; on Kubernetes,
the container restarted in the same pod with the same emptyDir)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from churn_models import GOOD, register_versions, wait_for
from servers import start, stop

from loopml.context import Workspace
from loopml.examples import churn
from loopml.predlog import read_store_segments, store_segments

pytestmark = pytest.mark.slow
FLUSH_SECONDS = 0.25  # PredictionLogWriter's default: answers buffered in memory at most this long


def serve(config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = start([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                  "--config", str(config)], log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 180, "start")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, re.search(r"on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]


def test_a_killed_replica_loses_only_the_answers_of_its_last_moments(tmp_path: Path) -> None:
    config = churn.init_project(tmp_path / "replica", n_customers=200, seed=1)
    # segments close only hourly: everything answered sits in the open segment when the kill comes
    config.write_text(config.read_text() + '\n[serving]\nbackend = "builtin"\n[serving.options]\n'
                      'log_to_store = true\nlog_segment_seconds = 3600\n')
    ws = Workspace.open(config)
    register_versions(ws, prefix="crash")

    proc, url = serve(config, tmp_path / "first.log")
    answered: list[tuple[float, str]] = []
    stop_sending = threading.Event()

    def client(n: int) -> None:
        body = json.dumps({"rows": [GOOD]}).encode()
        i = 0
        while not stop_sending.is_set():
            rid = f"c{n}-{i}"
            i += 1
            request = urllib.request.Request(url + "/predict", data=body, headers={
                "Content-Type": "application/json", "X-Request-ID": rid})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    if resp.status == 200:
                        resp.read()
                        answered.append((time.time(), rid))
            except OSError:
                return  # the server is gone

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in clients:
        t.start()
    wait_for(lambda: len(answered) >= 1500, 120, "1,500 answers")
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stop_sending.set()
    for t in clients:
        t.join(30)
    assert store_segments(ws.store, "churn") == []  # nothing closed before the kill: all of it was at risk

    again, _ = serve(config, tmp_path / "second.log")
    try:
        assert "left by" in (tmp_path / "second.log").read_text()
        logged = {r["request_id"] for r in read_store_segments(ws.store, store_segments(ws.store, "churn"))}
    finally:
        stop(again)
    missing = [(t, rid) for t, rid in answered if rid not in logged]
    late = [killed_at - t for t, _ in missing]
    assert all(age <= 1.0 for age in late), sorted(late)[-5:]  # only the last second's answers may be lost
    assert len(missing) <= sum(1 for t, _ in answered if t > killed_at - 1.0)
    print(f"answered {len(answered)}, in the store {len(answered) - len(missing)}, lost {len(missing)} "
          f"(answered within {max(late, default=0):.2f} s of the kill)")
