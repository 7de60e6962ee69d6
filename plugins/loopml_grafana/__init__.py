"""The ``grafana`` monitor: one dashboard for every project and model, provisioned as code, with
promotions as annotations.

The dashboard (:mod:`loopml_grafana.dashboard`) is built with Grafana's own typed builders
(``grafana-foundation-sdk``, generated from Grafana's dashboard schema) and checked against that
schema. Its variables choose the data source, project, model and versions. Panels: traffic and
traffic share by version, p99 latency by version, failed rows and HTTP 5xx by version, a drift heat
map (test statistic per feature over time), drifted features as a state timeline, live performance
per version, gate results of the last candidate; promotions, rollbacks and canaries appear as
annotations (tags ``loopml``, ``project:<p>``, ``model:<m>``).

Through the HTTP API with ``grafana-client`` (``[monitors.grafana] url``, token from
``$GRAFANA_TOKEN``): the folder and dashboard are created or updated on first use, and every
promotion, rollback and canary start is posted as an annotation. Or as files: ``python -m
loopml_grafana`` prints the dashboard JSON for Grafana's file provisioning (``deployments/grafana/``).
Tested against a local HTTP server that implements the Grafana API endpoints used here (folders,
dashboards, annotations, health); no Grafana server runs in CI.
"""

from __future__ import annotations

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
from loopml_grafana.dashboard import DASHBOARD_UID, dashboard

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


class GrafanaMonitor:
    """Monitor protocol over grafana-client: provisions the dashboard, posts annotations."""

    name = "grafana"

    def __init__(self, options: GrafanaMonitorOptions, project: str) -> None:
        self.options = options
        self.project = project
        self._provisioned = False
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
        """Create the folder (once) and create or overwrite the dashboard (once per process; it
        serves every project and model); returns its uid."""
        from grafana_client.client import GrafanaClientError

        with self._lock:
            if self._provisioned:
                return DASHBOARD_UID
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
            self._provisioned = True
            return DASHBOARD_UID

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
    if len(args) > 3 or any(a.startswith("-") for a in args):
        print("usage: python -m loopml_grafana [PROJECT [MODEL [DATASOURCE_UID]]]\n"
              "  prints the dashboard of every loopml project (the arguments only preselect its variables)",
              file=sys.stderr)
        return 2
    print(json.dumps(dashboard(*args), indent=2, sort_keys=True))
    return 0
