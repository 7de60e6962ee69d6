"""The ``grafana`` monitor: a dashboard per model, provisioned as code, with promotions as annotations.

The dashboard is built with Grafana's own typed builders (``grafana-foundation-sdk``, generated
from Grafana's dashboard schema), so what loopml sends is what the schema allows. Panels, per
model: traffic and traffic share by version, p99 latency by version, failed rows by version, a
drift heat map (test statistic per feature over time), drifted features as a state timeline,
live performance per version, gate results of the last candidate; promotions, rollbacks and
canaries appear as annotations (tag ``loopml``).

Through the HTTP API with ``grafana-client`` (``[monitors.grafana] url``, token from
``$GRAFANA_TOKEN``): the folder and dashboard are created or updated on first use, and every
promotion, rollback and canary start is posted as an annotation. Or as files: ``python -m
loopml_grafana PROJECT MODEL`` prints the dashboard JSON for Grafana's file provisioning
(``deployments/grafana/``). Tested against a local HTTP server that implements the Grafana API
endpoints used here (folders, dashboards, annotations, health); no Grafana server runs in CI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from loopml.plugins import hookimpl
from loopml.specs import BackendSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from loopml.records import DriftReport, LoopEvent, PromotionEvent

log = logging.getLogger(__name__)
ANNOTATED = ("loopml.canary.started", "loopml.model.rejected", "loopml.performance.degraded")
"""Kinds annotated from ``on_event``; promotions, rollbacks and drift come through their own methods."""


class GrafanaMonitorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(description="Grafana base URL, e.g. http://127.0.0.1:3000")
    token: SecretStr | None = Field(default=None, description="service-account token (secret); "
                                                              "default: $GRAFANA_TOKEN")
    folder: str = Field(default="loopml", description="folder title (and uid) for loopml's dashboards")
    datasource_uid: str = Field(default="prometheus", description="uid of the Prometheus data source")
    timeout: float = Field(default=10.0, gt=0)


def dashboard_uid(project: str, model: str) -> str:
    slug = f"loopml-{project}-{model}".lower()
    return slug if len(slug) <= 40 else slug[:31] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]


def dashboard(project: str, model: str, datasource_uid: str = "prometheus") -> dict[str, Any]:
    """The overview dashboard of one model, as Grafana's dashboard JSON (schema-typed builders)."""
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

    ds = DataSourceRef(type_val="prometheus", uid=datasource_uid)
    sel = f'model="{model}"'
    flow = f'project="{project}",model="{model}"'

    def query(expr: str, legend: str, ref: str = "A") -> Any:
        return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(ds)

    def place(panel: Any, x: int, y: int, w: int = 12, h: int = 8) -> Any:
        return panel.datasource(ds).grid_pos(GridPos(h=h, w=w, x=x, y=y))

    panels = [
        place(timeseries.Panel().title("Traffic by version (rows/s)").unit("rps").with_target(
            query(f"sum by (version) (rate(loopml_prediction_rows_total{{{sel}}}[$__rate_interval]))", "v{{version}}")
        ), 0, 0),
        place(timeseries.Panel().title("Traffic share by version").unit("percentunit").min(0).max(1).with_target(
            query(f"loopml_traffic_weight{{{sel}}}", "v{{version}}")), 12, 0),
        place(timeseries.Panel().title("p99 latency by version").unit("s").with_target(query(
            f"histogram_quantile(0.99, sum by (version, le) "
            f"(rate(loopml_request_latency_seconds_bucket{{{sel}}}[$__rate_interval])))", "v{{version}}")), 0, 8),
        place(timeseries.Panel().title("Errors: failed rows by version, HTTP 5xx").unit("rps").with_target(
            query(f"sum by (version) (rate(loopml_prediction_errors_total{{{sel}}}[$__rate_interval]))",
                  "v{{version}} failed rows")).with_target(
            query(f'sum (rate(loopml_requests_total{{{sel},status=~"5.."}}[$__rate_interval]))', "HTTP 5xx", "B")),
            12, 8),
        place(heatmap.Panel().title("Drift: test statistic per feature").with_target(
            query(f"loopml_drift_statistic{{{flow}}}", "{{feature}}")), 0, 16),
        place(statetimeline.Panel().title("Drifted features (Holm-adjusted)").with_target(
            query(f"loopml_drift_feature_drifted{{{flow}}}", "{{feature}}")), 12, 16),
        place(timeseries.Panel().title("Live performance (delayed labels)").with_target(
            query(f"loopml_live_metric{{{flow}}}", "v{{version}} {{metric}}")), 0, 24),
        place(stat.Panel().title("Production version").with_target(
            query(f'loopml_alias_version{{{flow},alias="production"}}', "production")), 12, 24, 6, 8),
        place(stat.Panel().title("Drift now").with_target(query(f"loopml_drift_detected{{{flow}}}", "drift")),
              18, 24, 6, 8),
        place(table.Panel().title("Gates of the last candidate").with_target(
            query(f"loopml_gate_value{{{flow}}}", "{{check}}").instant()), 0, 32, 24, 8),
    ]
    board = (db.Dashboard(f"loopml · {project} · {model}").uid(dashboard_uid(project, model))
             .tags(["loopml", f"project:{project}", f"model:{model}"]).refresh("30s").time("now-6h", "now")
             .annotation(db.AnnotationQuery().name("loopml promotions").datasource(
                 DataSourceRef(type_val="grafana", uid="-- Grafana --")).enable(True).icon_color("purple")
                 .target(db.AnnotationTarget().type("tags").tags(["loopml", f"model:{model}"]).limit(100)
                         .match_any(False))))
    for panel in panels:
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


class GrafanaMonitor:
    """Monitor protocol over grafana-client: provisions the dashboard, posts annotations."""

    name = "grafana"

    def __init__(self, options: GrafanaMonitorOptions, project: str) -> None:
        self.options = options
        self.project = project
        self._provisioned: set[str] = set()
        self._lock = threading.Lock()
        self._api: Any = None

    @property
    def api(self) -> Any:
        if self._api is None:
            from grafana_client import GrafanaApi, TokenAuth

            secret = self.options.token.get_secret_value() if self.options.token else os.environ.get("GRAFANA_TOKEN")
            self._api = GrafanaApi.from_url(self.options.url, credential=TokenAuth(secret) if secret else None,
                                            timeout=self.options.timeout)
        return self._api

    def provision(self, model: str) -> str:
        """Create the folder (once) and create or overwrite the model's dashboard; returns its uid."""
        from grafana_client.client import GrafanaClientError

        with self._lock:
            uid = dashboard_uid(self.project, model)
            if model in self._provisioned:
                return uid
            folder = self.options.folder
            try:
                self.api.folder.get_folder(folder)
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                self.api.folder.create_folder(folder, uid=folder)
            board = dashboard(self.project, model, self.options.datasource_uid)
            self.api.dashboard.update_dashboard({"dashboard": board, "folderUid": folder, "overwrite": True,
                                                 "message": "provisioned by loopml"})
            self._provisioned.add(model)
            return uid

    def annotate(self, model: str, version: int | None, action: str, reason: str, ts: float | None = None) -> None:
        uid = self.provision(model)
        self.api.annotations.add_annotation(
            dashboard_uid=uid, time_from=int((ts or time.time()) * 1000),
            tags=["loopml", f"model:{model}", f"project:{self.project}", action],
            text=f"{model} v{version}: {action}. {reason}"[:1000])

    # ------------------------------------------------------------------ Monitor protocol
    def observe(self, model: str, version: int, inputs: pd.DataFrame, outputs: Sequence[Any],
                latency_ms: Sequence[float]) -> None:
        self.provision(model)

    def on_drift(self, report: DriftReport) -> None:
        self.annotate(report.model, None, "drift", report.reason)

    def on_promotion(self, event: PromotionEvent) -> None:
        if event.alias == "canary" and event.action == "promote":
            return  # annotated once, as "started", from the loopml.canary.started event
        action = {"rollback": "rolled-back", "clear": "cleared"}.get(event.action, "promoted")
        target = f"v{event.to_version}" if event.to_version is not None else "removed"
        self.annotate(event.name, event.to_version if event.to_version is not None else event.from_version, action,
                      f"{event.alias}: v{event.from_version or '-'} -> {target}. {event.reason}")

    def on_event(self, event: LoopEvent) -> None:
        if event.kind in ANNOTATED:
            self.annotate(event.model, event.version, event.kind.rsplit(".", 1)[-1], event.reason, event.ts)


def _factory(options: GrafanaMonitorOptions, ctx: Any) -> GrafanaMonitor:
    return GrafanaMonitor(options, ctx.project)


@hookimpl
def loopml_monitors() -> list[BackendSpec]:
    return [BackendSpec("grafana", _factory, GrafanaMonitorOptions,
                        "a dashboard per model (provisioned through the Grafana API) with promotions as annotations")]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m loopml_grafana PROJECT MODEL [DATASOURCE_UID]", file=sys.stderr)
        return 2
    print(json.dumps(dashboard(*args), indent=2, sort_keys=True))
    return 0
