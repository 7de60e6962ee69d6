"""Monitor: drift of live inputs against the training reference; emits loopml.drift.detected."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, label_run, on_failure, publish_markdown, report_link, save_report, workspace
from loopml import performance
from loopml.drift import window_text as drift_window_text
from loopml.errors import ModelNotFoundError
from loopml.records import DriftReport
from loopml.stages.drift_check import check_drift, drift_reference
from loopml.stages.monitoring import claimed_window, observe
from loopml.stages.project import pipeline_config, production_model


@flow(name="loopml-monitor", on_failure=on_failure("monitor"))
@emits_lineage
def monitor(since: float | None = None, config: str | None = None,
            profile: str | None = None) -> tuple[DriftReport, str]:
    """Check the prediction log since ``since`` (unix time), or, by default, the rows logged since
    the previous monitor run. Returns (report, local HTML path)."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    cfg = pipeline_config(ws)
    label_run(ws, f"monitor-{cfg.model_name}", model=cfg.model_name)
    model = production_model(ws, cfg.model_name)
    if model is None:
        raise ModelNotFoundError(f"no production model of {cfg.model_name} to monitor yet: run the pipeline first "
                                 "(loopml run), then serve it (loopml serve) so there is traffic to check")
    reference = drift_reference(ws, model)
    # the rows count as read only if every step below succeeds (a failure leaves them for the next run)
    with claimed_window(ws, cfg.model_name, since) as window:
        observe(ws, cfg.model_name, window)
        current = window.inputs
        report, key, alert = check_drift(ws, reference, current, f"training inputs of {model.ref}",
                                              production_version=model.version, outputs=window.outputs,
                                              window=window.span)
        path = save_report(ws, key, ws.store.get(key).decode())
        logger.info("drift check over %d rows: %s", len(current), report.reason)
        rows = "\n".join(f"| {f.feature} | {f.kind} | {f.statistic:.4g} | {f.p_adjusted:.3g} | "
                         f"{'**DRIFT**' if f.drifted else 'ok'} |" for f in report.features)
        publish_markdown(f"{cfg.model_name}-drift",
                         f"# Drift check: {report.reason}\n\n{drift_window_text(report, len(current))}\n\n"
                         "| feature | test | statistic | Holm p | verdict |"
                         f"\n|---|---|---|---|---|\n{rows}\n\nReport with plots: "
                         f"{report_link(ws, key, f'{cfg.model_name}-drift-report', 'drift report')}",
                         "drift of live inputs vs training data")
        if any(r.get("entity") is not None for r in window.records):
            skew = performance.skew(ws, window.records)
            publish_markdown(f"{cfg.model_name}-skew", "# Training-serving skew of served entities\n\n"
                             + performance.skew_markdown(skew), "served inputs vs point-in-time and training values")
            worst = max(skew, key=lambda s: s.online_vs_offline, default=None)
            if worst is not None and worst.online_vs_offline > 0:
                logger.warning("online features differ from point-in-time values for %s on %.1f%% of served entities",
                               worst.feature, 100 * worst.online_vs_offline)
        if alert:  # check_drift announced it: hooks, monitors and the Prefect event loopml.drift.detected
            logger.warning("drift alert raised for %s: %s", model.ref, report.reason)
    return report, str(path)
