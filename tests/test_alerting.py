"""loopml's alert rules, checked by promtool and run for real: the `prometheus` monitor pushes to a
Pushgateway, Prometheus scrapes it and evaluates the shipped rules, Alertmanager delivers to a webhook."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import free_port, start, stop, wait_http

from loopml.records import LoopEvent
from loopml.testing import MonitorSuite
from loopml_prometheus import PrometheusMonitor, PrometheusMonitorOptions

RULES = Path(__file__).parent.parent / "deployments" / "prometheus"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="apt-get install prometheus")


@needs_promtool
@pytest.mark.external
def test_shipped_rules_and_configs_pass_promtool(tmp_path: Path) -> None:
    shipped = tmp_path / "prometheus"
    shutil.copytree(RULES, shipped)
    # promtool checks that the scrape token file exists: the one the config names, here in tmp_path
    config = shipped / "prometheus.yml"
    assert "/etc/prometheus/secrets/loopml-serve-token" in config.read_text()
    (tmp_path / "token").write_text("t\n")
    config.write_text(config.read_text().replace("/etc/prometheus/secrets/loopml-serve-token", str(tmp_path / "token")))
    for args in (["check", "rules", "loopml-alerts.yml"], ["test", "rules", "loopml-alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        out = subprocess.run(["promtool", *args], cwd=shipped, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
    assert "6 rules found" in subprocess.run(["promtool", "check", "rules", "loopml-alerts.yml"], cwd=RULES,
                                             capture_output=True, text=True).stdout


def drift_event(drifted: bool) -> LoopEvent:
    stats = {"monthly_charges": {"statistic": 0.41 if drifted else 0.02, "p_adjusted": 1e-9 if drifted else 0.8,
                                 "drifted": drifted},
             "contract": {"statistic": 3.1, "p_adjusted": 0.4, "drifted": False}}
    return LoopEvent("loopml.drift.checked", "shop", "churn", 3, "test", "tester",
                     {"statistics": stats, "drifted": drifted, "rows": 500}, time.time())


def test_textfile_mode_writes_one_prom_file_per_kind(tmp_path: Path) -> None:
    monitor = PrometheusMonitor(PrometheusMonitorOptions(), "shop", tmp_path)
    monitor.on_event(drift_event(True))
    text = (tmp_path / "shop-churn-drift.prom").read_text()
    assert 'loopml_drift_detected{model="churn",project="shop"} 1.0' in text
    assert 'loopml_drift_statistic{feature="monthly_charges",model="churn",project="shop"} 0.41' in text
    monitor.on_event(drift_event(False))  # a quiet check replaces the file: the alert can resolve
    assert 'loopml_drift_detected{model="churn",project="shop"} 0.0' in (tmp_path / "shop-churn-drift.prom").read_text()


class Webhook(BaseHTTPRequestHandler):
    received: queue.Queue[dict] = queue.Queue()

    def do_POST(self) -> None:  # Alertmanager's webhook payload
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def wait_for_alert(status: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            payload = Webhook.received.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            raise AssertionError(f"no {status} LoopmlDriftDetected notification within {timeout}s") from None
        alerts = [a for a in payload["alerts"] if a["labels"]["alertname"] == "LoopmlDriftDetected"
                  and a["status"] == status]
        if alerts:
            return alerts[0]


@pytest.mark.slow
@needs_promtool
@pytest.mark.skipif(not (shutil.which("prometheus-alertmanager") and shutil.which("prometheus-pushgateway")),
                    reason="apt-get install prometheus-alertmanager prometheus-pushgateway")
def test_drift_pushed_by_the_monitor_reaches_a_webhook_through_prometheus_and_alertmanager(tmp_path: Path) -> None:
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    ports = {k: free_port() for k in ("push", "prom", "am", "am_cluster")}
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: hook, group_by: [alertname, project, model], group_wait: 1s, group_interval: 1s, "
        "repeat_interval: 1h}\n"
        f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook.server_port}/alerts\n"
        "        send_resolved: true\n")
    shutil.copy(RULES / "loopml-alerts.yml", tmp_path / "loopml-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [loopml-alerts.yml]\n"
        f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{ports['am']}']}}]}}]}}\n"
        "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{ports['push']}']}}]\n")
    procs = [
        # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: shared by every
        # run on the machine (a drift pushed by another test fired here). Each test gets its own file.
        start(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{ports['push']}",
               f"--persistence.file={tmp_path / 'push.data'}"], tmp_path / "push.log"),
        start(["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}",
               f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{ports['am']}",
               f"--cluster.listen-address=127.0.0.1:{ports['am_cluster']}"], tmp_path / "am.log"),
        start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{ports['prom']}"], tmp_path / "prom.log"),
    ]
    try:
        wait_http(f"http://127.0.0.1:{ports['push']}/-/ready", log=tmp_path / "push.log")
        wait_http(f"http://127.0.0.1:{ports['am']}/-/ready", log=tmp_path / "am.log")
        wait_http(f"http://127.0.0.1:{ports['prom']}/-/ready", log=tmp_path / "prom.log")
        monitor = PrometheusMonitor(PrometheusMonitorOptions(pushgateway=f"127.0.0.1:{ports['push']}"), "shop",
                                    tmp_path / "unused")
        monitor.on_event(drift_event(True))
        alert = wait_for_alert("firing")
        assert alert["labels"]["project"] == "shop" and alert["labels"]["model"] == "churn"
        assert "live inputs drifted" in alert["annotations"]["summary"]
        monitor.on_event(drift_event(False))  # the next quiet check resolves it
        assert wait_for_alert("resolved")["labels"]["model"] == "churn"
    finally:
        for proc in procs:
            stop(proc)
        hook.shutdown()


class TestPrometheusMonitorConformance(MonitorSuite):
    """The shared monitor contract, read back from the metrics the monitor wrote (textfile mode)."""

    @pytest.fixture
    def monitor(self, tmp_path: Path) -> PrometheusMonitor:
        return PrometheusMonitor(PrometheusMonitorOptions(), "suite", tmp_path)

    def recorded(self, monitor: PrometheusMonitor) -> list[dict]:
        from prometheus_client.parser import text_string_to_metric_families

        out = []
        for path in sorted(monitor.textfile_dir.glob("*.prom")):
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(path.read_text()) for s in family.samples}
            names = {name for name, _ in samples}
            if "loopml_drift_detected" in names and any(v == 1.0 for (n, _), v in samples.items()
                                                        if n == "loopml_drift_detected"):
                drifted = [dict(labels)["feature"] for (n, labels), v in samples.items()
                           if n == "loopml_drift_feature_drifted" and v == 1.0]
                out.append({"event": "drift", "features": drifted})
            if "loopml_alias_version" in names:
                version = next(v for (n, _), v in samples.items() if n == "loopml_alias_version")
                out.append({"event": "promotion", "to_version": int(version)})
            if "loopml_window_rows" in names:
                out.append({"event": "observe"})
        return out
