"""A real Prometheus (Debian's binary) scrapes loopml's /metrics; its own query API reads them back."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from servers import free_port, start, stop, wait_http

from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.serving.builtin import post_json
from loopml.serving.requests import ServerLimits
from loopml.serving.runtime import ModelServer
from loopml.trainers import train_model

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus")]
VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
ROOT = Path(__file__).resolve().parents[1]
GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_prometheus_scrapes_requests_errors_latency_and_predictions(tmp_path: Path) -> None:
    data = churn.generate(400, seed=5)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
    predictor = Predictor.from_bytes(train_model(frame, "churned", VIEW.numeric, VIEW.categorical,
                                                 epochs=1).artifact)
    token = "scrape-token-5f1c"
    server = ModelServer("churn", limits=ServerLimits(token=token)).start()
    server.add_version(3, predictor)
    port = free_port()
    host, served_port = server.address
    # the shipped scrape job, as written, but for where this test's server and token file are
    shipped = yaml.safe_load((ROOT / "deployments" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "loopml-serve")
    (tmp_path / "token").write_text(token + "\n")
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    job["static_configs"] = [{"targets": [f"{host}:{served_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"},
                                                             "scrape_configs": [job]}))
    proc = start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                 tmp_path / "prometheus.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/-/ready", timeout=60, log=tmp_path / "prometheus.log")
        for _ in range(20):
            assert post_json(server.url + "/predict", {"rows": [GOOD, GOOD]}, token=token)[0] == 200
        assert post_json(server.url + "/predict", {"rows": [{**GOOD, "region": [5]}]}, token=token)[0] == 422
        with pytest.raises(urllib.error.HTTPError, match="401"):  # /metrics is not open without the token
            urllib.request.urlopen(server.url + "/metrics", timeout=10)
        deadline = time.monotonic() + 90
        while True:
            ok = query(base, 'loopml_requests_total{route="/predict",status="200"}')
            bad = query(base, 'loopml_requests_total{route="/predict",status="422"}')
            rows = query(base, 'loopml_prediction_rows_total{version="3"}')
            if ok and bad and rows and float(ok[0]["value"][1]) >= 20 and float(rows[0]["value"][1]) >= 40:
                break
            up = query(base, 'up{job="loopml-serve"}')
            assert time.monotonic() < deadline, f"Prometheus never scraped the served metrics (up: {up})"
            time.sleep(0.5)
        assert query(base, "histogram_quantile(0.99, sum by (le) (loopml_request_latency_seconds_bucket))")
        assert query(base, 'sum(loopml_prediction_value_count{model="churn"})')
        assert query(base, 'loopml_traffic_weight{version="3"}')[0]["value"][1] == "1"
    finally:
        stop(proc)
        server.stop()
