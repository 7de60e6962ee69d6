"""The `grafana` monitor through grafana-client, against a local HTTP server implementing exactly the
Grafana API endpoints it calls (no Grafana server can be installed here): folders, dashboards,
annotations. The dashboard JSON is built from Grafana's schema-generated builders and round-trips
through the schema's own model."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from loopml.records import LoopEvent, PromotionEvent
from loopml.testing import MonitorSuite
from loopml_grafana import GrafanaMonitor, GrafanaMonitorOptions, dashboard
from loopml_grafana.dashboard import DASHBOARD_UID, schema_problems

ROOT = Path(__file__).parent.parent


class FakeGrafana(BaseHTTPRequestHandler):
    """The subset of Grafana's HTTP API (v10/11) that the plugin uses, with its status codes."""

    folders: ClassVar[dict[str, dict]] = {}
    dashboards: ClassVar[dict[str, dict]] = {}
    annotations: ClassVar[list[dict]] = []
    auth: ClassVar[list[str]] = []

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def do_GET(self) -> None:
        self.auth.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/api/folders/"):
            uid = self.path.rsplit("/", 1)[1]
            if uid in self.folders:
                return self._send(200, self.folders[uid])
            return self._send(404, {"message": "folder not found"})
        return self._send(404, {"message": "not found"})

    def do_POST(self) -> None:
        self.auth.append(self.headers.get("Authorization", ""))
        body = self._body()
        if self.path == "/api/folders":
            if body.get("uid") in self.folders:
                return self._send(409, {"message": "a folder with the same uid already exists"})
            folder = {"uid": body.get("uid"), "title": body["title"], "id": len(self.folders) + 1}
            self.folders[folder["uid"]] = folder
            return self._send(200, folder)
        if self.path == "/api/dashboards/db":
            dash = body["dashboard"]
            if not dash.get("title") or not isinstance(dash.get("panels"), list):
                return self._send(400, {"message": "Dashboard title cannot be empty"})
            if body.get("folderUid") not in self.folders:
                return self._send(400, {"message": "folder not found"})
            if dash["uid"] in self.dashboards and not body.get("overwrite"):
                return self._send(412, {"message": "The dashboard has been changed by someone else",
                                        "status": "version-mismatch"})
            version = self.dashboards.get(dash["uid"], {}).get("version", 0) + 1
            self.dashboards[dash["uid"]] = {**body, "version": version}
            return self._send(200, {"uid": dash["uid"], "status": "success", "version": version,
                                    "url": f"/d/{dash['uid']}"})
        if self.path == "/api/annotations":
            if body.get("dashboardUID") not in self.dashboards:
                return self._send(404, {"message": "Dashboard not found"})
            self.annotations.append(body)
            return self._send(200, {"message": "Annotation added", "id": len(self.annotations)})
        return self._send(404, {"message": "not found"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def grafana() -> Any:
    for store in (FakeGrafana.folders, FakeGrafana.dashboards):
        store.clear()
    FakeGrafana.annotations.clear()
    FakeGrafana.auth.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def event(kind: str, version: int, reason: str) -> LoopEvent:
    return LoopEvent(kind, "shop", "churn", version, reason, "ci", {"alias": "production"}, time.time())


@pytest.mark.server
def test_promotions_provision_the_dashboard_once_and_become_annotations(grafana: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_secret")
    monitor = GrafanaMonitor(GrafanaMonitorOptions(url=grafana), "shop")
    monitor.on_event(event("loopml.canary.started", 3, "v3 gets 10% of traffic"))
    monitor.on_promotion(PromotionEvent("churn", "production", 2, 3, "promote", "loopml-canary", "canary passed"))
    monitor.on_promotion(PromotionEvent("churn", "production", 3, 2, "rollback", "me", "manual rollback"))
    monitor.on_event(event("loopml.drift.checked", 2, "quiet"))  # not annotated
    uid = DASHBOARD_UID  # one dashboard for every project and model
    assert set(FakeGrafana.folders) == {"loopml"}
    assert FakeGrafana.dashboards[uid]["version"] == 1 and FakeGrafana.dashboards[uid]["folderUid"] == "loopml"
    assert [a["tags"][-1] for a in FakeGrafana.annotations] == ["started", "promoted", "rolled-back"]
    assert all(a["dashboardUID"] == uid for a in FakeGrafana.annotations)
    assert "canary passed" in FakeGrafana.annotations[1]["text"]
    assert all({"loopml", "project:shop", "model:churn"} <= set(a["tags"]) for a in FakeGrafana.annotations)
    assert set(FakeGrafana.auth) == {"Bearer glsa_secret"}
    # A second process (another flow run) overwrites the dashboard rather than failing.
    GrafanaMonitor(GrafanaMonitorOptions(url=grafana), "shop").provision("churn")
    assert FakeGrafana.dashboards[uid]["version"] == 2


def nulls(value, path="$"):
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


def test_the_dashboard_fits_grafanas_schema_and_covers_every_project() -> None:
    board = dashboard()
    assert schema_problems(board) == []  # every key and value is the schema's own, typed as it says
    assert nulls(board) == [] and "style" not in board  # no "options": null, no deprecated style
    ids = [p["id"] for p in board["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "project", "model", "version"]
    assert variables["version"]["multi"] and variables["version"]["includeAll"]
    assert '$project' in variables["model"]["query"] and '$model' in variables["version"]["query"]
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Traffic by version", "p99 latency", "Errors", "Drift: test statistic", "Live performance"):
        assert any(t.startswith(wanted) for t in titles), titles
    kinds = {p["title"].split(":")[0]: p["type"] for p in board["panels"]}
    assert kinds["Drift"] == "heatmap"
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert not any('"demo"' in e or '"churn"' in e for e in exprs)  # nothing fixed to one project
    assert all("$model" in e for e in exprs)
    assert any('loopml_requests_total{model="$model",version=~"$version",status=~"5.."}' in e and "by (version)" in e
               for e in exprs)  # 5xx split by version
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    assert board["annotations"]["list"][0]["target"]["tags"] == ["loopml", "project:$project", "model:$model"]


def test_the_schema_check_names_what_grafana_would_not_read() -> None:
    for change, expected in [
        (lambda b: b["panels"][0]["options"]["legend"].update(bogus=1), "options.legend.bogus: not in the schema"),
        (lambda b: b["panels"][2]["gridPos"].update(w="12"), "grid_pos.w"),
        (lambda b: b["panels"][0]["options"]["legend"].update(displayMode="huge"), "display_mode"),
        (lambda b: b["panels"][1].update(options=None), "cannot read it"),
        (lambda b: b["panels"][3].update(style="dark"), "panels[3].style: not in the schema"),
    ]:
        board = dashboard()
        change(board)
        assert any(expected in p for p in schema_problems(board)), (expected, schema_problems(board))


def test_the_shipped_dashboard_is_what_the_plugin_generates() -> None:
    shipped = json.loads((ROOT / "deployments" / "grafana" / "dashboards" / "loopml.json").read_text())
    assert shipped == dashboard(), "regenerate: python -m loopml_grafana > deployments/grafana/dashboards/loopml.json"


@pytest.mark.server
class TestGrafanaMonitorConformance(MonitorSuite):
    """The shared monitor contract, read back through the (local) Grafana API."""

    @pytest.fixture
    def monitor(self, grafana: str) -> GrafanaMonitor:
        return GrafanaMonitor(GrafanaMonitorOptions(url=grafana), "suite")

    def recorded(self, monitor: GrafanaMonitor) -> list[dict]:
        out = [{"event": "observe"} for _ in FakeGrafana.dashboards]  # observing provisions the dashboard
        for note in FakeGrafana.annotations:
            action = note["tags"][-1]
            if action == "drift":
                out.append({"event": "drift", "text": note["text"]})
            elif action in ("promoted", "rolled-back"):
                version = int(note["text"].split(" v", 1)[1].split(":", 1)[0])
                out.append({"event": "promotion", "to_version": version, "text": note["text"]})
        return out
