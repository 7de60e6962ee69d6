"""Live performance: join delayed labels to the prediction log; emits loopml.performance.degraded."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, on_failure, publish_markdown, report_link, save_report, workspace
from loopml import performance
from loopml.stages.project import pipeline_config


@flow(name="loopml-performance", on_failure=on_failure("performance"))
@emits_lineage
def live_performance(config: str | None = None, profile: str | None = None,
                     labels: str | None = None) -> performance.LivePerformance:
    """Measure each served version on the labels that arrived (``labels``: a dataset ref; default
    the latest version of ``[pipeline.monitoring] labels_dataset``)."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    cfg = pipeline_config(ws)
    frame = ws.datasets.load(ws.datasets.get(labels)) if labels else None
    result, key = performance.live_performance(ws, frame)
    save_report(ws, key, ws.store.get(key).decode())
    rows = "\n".join(f"| v{v.version} | {v.labels} | {v.metrics.get(result.primary, float('nan')):.4f} | "
                     f"{'-' if v.holdout is None else f'{v.holdout:.4f}'} |" for v in result.versions)
    publish_markdown(f"{cfg.model_name}-performance",
                     f"# Live performance: {'DEGRADED' if result.degraded else 'ok'}\n\n{result.reason}\n\n"
                     f"| version | labels | live {result.primary} | holdout |\n|---|---|---|---|\n{rows}\n\n"
                     "Report with plots: "
                     f"{report_link(ws, key, f'{cfg.model_name}-performance-report', 'performance report')}",
                     "live performance from delayed labels")
    (logger.warning if result.degraded else logger.info)("%s", result.reason)
    return result
