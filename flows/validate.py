"""Validate: every gate, candidate vs production on the same holdout rows."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import (
    gate_markdown,
    label_run,
    on_failure,
    publish_markdown,
    report_link,
    save_report,
    tracker_links,
    workspace,
)
from loopml import loop
from loopml.records import DatasetVersion, GateReport


@flow(name="loopml-validate", on_failure=on_failure("validate"))
def validate(candidate: loop.Candidate, labels: DatasetVersion, config: str | None = None,
             profile: str | None = None) -> tuple[GateReport, str, str]:
    """Returns (report, report key in the store, local HTML path)."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    label_run(ws, f"validate-{candidate.model_name}-{candidate.fingerprint[:8]}", model=candidate.model_name,
              fingerprint=candidate.fingerprint[:8])
    evaluation, key, html = loop.validate(ws, candidate, labels)
    report = evaluation.report
    path = save_report(ws, key, html)
    for check in report.checks:
        logger.info("%s %s: %s", "PASS" if check.passed else "FAIL", check.name, check.reason)
    link = report_link(ws, key, path, f"{report.model_name}-validation-report", "validation report")
    publish_markdown(f"{report.model_name}-validation",
                     gate_markdown(report, link, tracker_links(ws, candidate.run_id)),
                     f"gates for {report.candidate}")
    ws.notify("loopml_after_validation", report=report)
    return report, key, str(path)
