"""The S3 endpoint goes away under load (a real network cut between loopml and moto_server): the
server keeps answering, its log segments wait on local disk and reach S3 once it is back, and
commands that need the store say so in one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import boto3
import pytest
from churn_models import GOOD, register_versions, wait_for
from servers import TcpProxy, moto_server, start, stop

from loopml.context import Workspace
from loopml.examples import churn
from loopml.predlog import read_store_segments, store_segments

pytestmark = pytest.mark.slow


def test_an_s3_outage_under_load_loses_no_row_and_says_so_in_one_line(tmp_path: Path) -> None:
    with moto_server(tmp_path) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket="outage")
        proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
        config = churn.init_project(tmp_path / "project", n_customers=200, seed=1)
        text = re.sub(r'\[storage\]\nuri = "artifacts"[^\n]*\n', "", config.read_text())
        config.write_text(text + f'\n[storage]\nuri = "s3://outage/loopml"\n[storage.options]\n'
                          f'endpoint_url = "http://127.0.0.1:{proxy.port}"\nregion = "us-east-1"\n'
                          'access_key_id = "AKIATEST"\nsecret_access_key = "x"\nmax_attempts = 2\n'
                          'connect_timeout = 2\nread_timeout = 5\n'
                          '\n[serving]\nbackend = "builtin"\n[serving.options]\nlog_to_store = true\n'
                          'log_segment_seconds = 0.5\n')
        ws = Workspace.open(config)
        register_versions(ws, prefix="s3", reference=True)

        log = tmp_path / "serve.log"
        proc = start([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                      "--config", str(config)], log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        answered: list[str] = []
        failed: list[str] = []
        stop_sending = threading.Event()
        try:
            wait_for(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 180,
                     "start")
            assert proc.poll() is None, log.read_text()[-3000:]
            url = re.search(r"on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]

            def client(n: int) -> None:
                i = 0
                while not stop_sending.is_set():
                    rid = f"s{n}-{i}"
                    i += 1
                    request = urllib.request.Request(url + "/predict", data=json.dumps({"rows": [GOOD]}).encode(),
                                                     headers={"Content-Type": "application/json",
                                                              "X-Request-ID": rid})
                    try:
                        with urllib.request.urlopen(request, timeout=30) as resp:
                            resp.read()
                            answered.append(rid)
                    except OSError as exc:
                        failed.append(f"{rid}: {exc}")

            clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
            for t in clients:
                t.start()
            wait_for(lambda: len(store_segments(ws.store, "churn")) >= 2, 60, "segments uploaded")
            proxy.cut()  # S3 is gone
            cut_at = len(answered)
            wait_for(lambda: "could not upload prediction log segment" in log.read_text(), 60, "a failed upload")
            wait_for(lambda: len(answered) >= cut_at + 300, 120, "answers during the outage")
            gc = subprocess.run([sys.executable, "-m", "loopml.cli", "store", "gc", "--config", str(config)],
                                capture_output=True, text=True, timeout=300)
            assert gc.returncode == 2 and "S3" in gc.stderr and "Traceback" not in gc.stderr, gc.stderr[-2000:]
            assert len(gc.stderr.strip().splitlines()) <= 3, gc.stderr
            proxy.restore()  # back
            stop_sending.set()
            for t in clients:
                t.join(60)
            sent = set(answered)
            wait_for(lambda: sent <= {r["request_id"] for r in read_store_segments(
                ws.store, store_segments(ws.store, "churn"))}, 120, "every answered row in S3")
        finally:
            stop_sending.set()
            stop(proc)
            proxy.cut()
    assert failed == [], failed[:3]
