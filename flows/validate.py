"""Validate: every gate, candidate vs production on the same holdout rows."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import (
    emits_lineage,
    gate_markdown,
    label_run,
    on_failure,
    publish_markdown,
    report_link,
    save_report,
    tracker_links,
    workspace,
)
from loopml.records import DatasetVersion, GateReport
from loopml.stages.training import Candidate
from loopml.stages.validation import validate as validate_stage


@flow(name="loopml-validate", on_failure=on_failure("validate"))
@emits_lineage
def validate(candidate: Candidate, labels: DatasetVersion, config: str | None = None,
             profile: str | None = None) -> tuple[GateReport, str, str]:
    """Returns (report, report key in the store, local HTML path)."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    label_run(ws, f"validate-{candidate.model_name}-{candidate.fingerprint[:8]}", model=candidate.model_name,
              fingerprint=candidate.fingerprint[:8])
    evaluation, key, html = validate_stage(ws, candidate, labels)
    report = evaluation.report
    path = save_report(ws, key, html)
    for check in report.checks:
        logger.info("%s %s: %s", "PASS" if check.passed else "FAIL", check.name, check.reason)
    link = report_link(ws, key, f"{report.model_name}-validation-report", "validation report")
    publish_markdown(f"{report.model_name}-validation",
                     gate_markdown(report, link, tracker_links(ws, candidate.run_id)),
                     f"gates for {report.candidate}")
    return report, key, str(path)
