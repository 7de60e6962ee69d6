"""The ``prometheus`` monitor: what the loop decides, as Prometheus metrics.

Serving metrics (requests, errors, latency, answers, traffic per version) come from every
``loopml serve`` replica's own ``/metrics``; Prometheus scrapes those. This monitor covers what
happens in flows, which are short-lived batch jobs: drift per feature (statistic, Holm-adjusted
p), data volume per window, gate results, promotions and rollbacks, canary verdicts and live
performance from delayed labels. As Prometheus recommends for batch jobs, each kind of fact is
pushed to a Pushgateway as its own group (``job``, ``project``, ``model``, ``kind``), so a drift
push never erases the gate results; or, without a Pushgateway, written as ``<kind>.prom`` files
for node_exporter's textfile collector.

Alert rules over these metrics ship in ``deployments/prometheus/loopml-alerts.yml``.

    [monitors.prometheus]
    pushgateway = "http://127.0.0.1:9091"      # or: textfile_dir = "/var/lib/node_exporter"
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from loopml.plugins import hookimpl
from loopml.specs import BackendSpec

if TYPE_CHECKING:
    import pandas as pd

    from loopml.records import DriftReport, LoopEvent, PromotionEvent

log = logging.getLogger(__name__)


class PrometheusMonitorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pushgateway: str | None = Field(default=None, description="Pushgateway URL; each kind of fact is one group")
    textfile_dir: Path | None = Field(default=None, description="without a Pushgateway: folder of .prom files "
                                                                "for node_exporter (default <home>/monitoring/prom)")
    job: str = "loopml"
    timeout: float = Field(default=10.0, gt=0)


class PrometheusMonitor:
    """Monitor protocol over prometheus_client; one registry per push, no global state."""

    name = "prometheus"

    def __init__(self, options: PrometheusMonitorOptions, project: str, textfile_dir: Path) -> None:
        self.options = options
        self.project = project
        self.textfile_dir = textfile_dir

    # ------------------------------------------------------------------ publishing
    def _publish(self, kind: str, model: str, fill: Any) -> None:
        """Build one registry with ``fill(registry)`` and replace the group (kind, model) with it."""
        from prometheus_client import CollectorRegistry, Gauge

        registry = CollectorRegistry()
        fill(registry)
        stamp = Gauge("loopml_monitor_last_push_timestamp_seconds", "When loopml last published this kind",
                      ["project", "model", "kind"], registry=registry)
        stamp.labels(self.project, model, kind).set(time.time())
        if self.options.pushgateway:
            from prometheus_client import push_to_gateway

            push_to_gateway(self.options.pushgateway, job=self.options.job, registry=registry,
                            grouping_key={"project": self.project, "model": model, "kind": kind},
                            timeout=self.options.timeout)
            return
        from prometheus_client import write_to_textfile

        self.textfile_dir.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.textfile_dir / f"{self.project}-{model}-{kind}.prom"), registry)

    def _gauge(self, registry: Any, name: str, doc: str, labels: Sequence[str]) -> Any:
        from prometheus_client import Gauge

        return Gauge(name, doc, ["project", "model", *labels], registry=registry)

    # ------------------------------------------------------------------ Monitor protocol
    def observe(self, model: str, version: int, inputs: pd.DataFrame, outputs: Sequence[Any],
                latency_ms: Sequence[float]) -> None:
        import numpy as np

        def fill(registry: Any) -> None:
            rows = self._gauge(registry, "loopml_window_rows", "Rows in the last monitored window", ["version"])
            rows.labels(self.project, model, str(version)).set(len(outputs))
            p99 = self._gauge(registry, "loopml_window_latency_p99_seconds",
                              "p99 per-row latency over the last monitored window", ["version"])
            p99.labels(self.project, model, str(version)).set(
                float(np.percentile(latency_ms, 99)) / 1000 if len(latency_ms) else 0.0)
            numeric = [float(o) for o in outputs if not isinstance(o, str)]
            if numeric:
                mean = self._gauge(registry, "loopml_window_output_mean", "Mean answer over the last window",
                                   ["version"])
                mean.labels(self.project, model, str(version)).set(float(np.mean(numeric)))
            missing = self._gauge(registry, "loopml_window_missing_ratio", "Share of missing values per feature",
                                  ["version", "feature"])
            for column in inputs.columns:
                missing.labels(self.project, model, str(version), str(column)).set(
                    float(inputs[column].isna().mean()) if len(inputs) else 0.0)

        self._publish(f"window-v{version}", model, fill)

    def on_drift(self, report: DriftReport) -> None:
        """Confirmed drift (also published by every ``loopml.drift.checked`` event, quiet ones included)."""
        stats = {f.feature: {"statistic": f.statistic, "p_adjusted": f.p_adjusted, "drifted": f.drifted}
                 for f in report.features}
        rows = max((f.n_current for f in report.features), default=0)
        self._publish_drift(report.model, stats, report.drift_detected, rows)

    def on_promotion(self, event: PromotionEvent) -> None:
        self._publish_alias(event.name, event.alias, event.to_version,
                            event.action, time.time())

    def on_event(self, event: LoopEvent) -> None:
        handler = {
            "loopml.drift.checked": self._drift, "loopml.model.validated": self._gates,
            "loopml.canary.started": self._canary, "loopml.performance.measured": self._performance,
            "loopml.performance.degraded": self._performance,
        }.get(event.kind)  # promotions and confirmed drift arrive through on_promotion / on_drift
        if handler is not None:
            handler(event)

    def _drift(self, event: LoopEvent) -> None:
        """Every drift check, quiet ones included, so the drift alert resolves when drift goes away."""
        self._publish_drift(event.model, event.payload.get("statistics", {}), bool(event.payload.get("drifted")),
                            int(event.payload.get("rows", 0)))

    def _publish_drift(self, model: str, statistics: Any, drifted: bool, rows: int) -> None:

        def fill(registry: Any) -> None:
            stat = self._gauge(registry, "loopml_drift_statistic", "Test statistic per feature (KS or chi-square)",
                               ["feature"])
            p_adj = self._gauge(registry, "loopml_drift_p_adjusted", "Holm-adjusted p-value per feature", ["feature"])
            flag = self._gauge(registry, "loopml_drift_feature_drifted", "1 if the feature drifted", ["feature"])
            for feature, s in statistics.items():
                stat.labels(self.project, model, feature).set(float(s["statistic"]))
                p_adj.labels(self.project, model, feature).set(float(s["p_adjusted"]))
                flag.labels(self.project, model, feature).set(1.0 if s["drifted"] else 0.0)
            self._gauge(registry, "loopml_drift_detected", "1 if the last drift check confirmed drift",
                        []).labels(self.project, model).set(1.0 if drifted else 0.0)
            self._gauge(registry, "loopml_drift_window_rows", "Rows in the last drift check",
                        []).labels(self.project, model).set(rows)

        self._publish("drift", model, fill)

    def _gates(self, event: LoopEvent) -> None:
        def fill(registry: Any) -> None:
            passed = self._gauge(registry, "loopml_gate_passed", "1 if the gate passed for the last candidate",
                                 ["check"])
            value = self._gauge(registry, "loopml_gate_value", "Measured value of each gate", ["check"])
            for check, c in event.payload.get("checks", {}).items():
                passed.labels(self.project, event.model, check).set(1.0 if c["passed"] else 0.0)
                if c.get("value") is not None:
                    value.labels(self.project, event.model, check).set(float(c["value"]))
            metric = self._gauge(registry, "loopml_holdout_metric", "Candidate's metric on the holdout", ["metric"])
            for name, v in event.payload.get("metrics", {}).items():
                metric.labels(self.project, event.model, name).set(float(v))
            self._gauge(registry, "loopml_candidate_version", "Version of the last validated candidate",
                        []).labels(self.project, event.model).set(event.version or 0)

        self._publish("gates", event.model, fill)

    def _publish_alias(self, model: str, alias: str, version: int | None, action: str, ts: float) -> None:
        """``loopml_alias_version`` (0 once the alias was cleared) and when it last moved."""
        def fill(registry: Any) -> None:
            self._gauge(registry, "loopml_alias_version", "Version an alias points at", ["alias"]).labels(
                self.project, model, alias).set(version or 0)
            self._gauge(registry, "loopml_alias_moved_timestamp_seconds", "When the alias last moved, and how",
                        ["alias", "action"]).labels(self.project, model, alias, action).set(ts)

        self._publish(f"alias-{alias}", model, fill)

    def _canary(self, event: LoopEvent) -> None:
        def fill(registry: Any) -> None:
            self._gauge(registry, "loopml_canary_version", "Version under canary", ["mode"]).labels(
                self.project, event.model, str(event.payload.get("mode", "canary"))).set(event.version or 0)
            self._gauge(registry, "loopml_canary_started_timestamp_seconds", "When the canary started",
                        []).labels(self.project, event.model).set(event.ts)

        self._publish("canary", event.model, fill)

    def _performance(self, event: LoopEvent) -> None:
        def fill(registry: Any) -> None:
            live = self._gauge(registry, "loopml_live_metric", "Task metric on predictions joined to delayed labels",
                               ["version", "metric"])
            labels = self._gauge(registry, "loopml_live_labels", "Predictions joined to a label", ["version"])
            for version, m in event.payload.get("versions", {}).items():
                for name, v in m.get("metrics", {}).items():
                    live.labels(self.project, event.model, str(version), name).set(float(v))
                labels.labels(self.project, event.model, str(version)).set(int(m.get("labels", 0)))
            self._gauge(registry, "loopml_performance_degraded", "1 if live performance fell below its bound",
                        []).labels(self.project, event.model).set(1.0 if event.payload.get("degraded") else 0.0)

        self._publish("performance", event.model, fill)


def _factory(options: PrometheusMonitorOptions, ctx: Any) -> PrometheusMonitor:
    return PrometheusMonitor(options, ctx.project, ctx.resolve(options.textfile_dir, "monitoring/prom"))


@hookimpl
def loopml_monitors() -> list[BackendSpec]:
    return [BackendSpec("prometheus", _factory, PrometheusMonitorOptions,
                        "drift, gates, promotions, canaries and live performance as Prometheus metrics "
                        "(Pushgateway or textfile)")]
