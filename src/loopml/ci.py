"""The gate for a CI runner: ``loopml ci``.

One pass of the loop without Prefect and without a terminal (ingest, features, train or reuse,
validate against the target environment's production model, register, promote unless told not
to), then what CI systems read: JUnit XML with one test case per gate check (the reason as the
failure message), a markdown summary (GitHub's job summary when ``$GITHUB_STEP_SUMMARY`` is set),
and the reports as files to upload. The command's exit code says the verdict: 0 approved, 1 rejected
by a gate, 2 an error.
"""

from __future__ import annotations

import hashlib
import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from loopml import approvals
from loopml.reports import checks_markdown
from loopml.stages.data import apply_features, frames, ingest
from loopml.stages.project import pipeline_config, production_model
from loopml.stages.rejudge import record_verdict
from loopml.stages.release import register_and_promote, registered_version_of, release
from loopml.stages.training import train
from loopml.stages.validation import validate

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GateReport, ModelVersion, PromotionEvent


@dataclass(frozen=True)
class CiResult:
    """What one CI pass decided."""

    model: ModelVersion
    report: GateReport
    report_key: str
    baseline: str | None  # the production version it was judged against
    promoted: bool
    awaiting_approval: int | None
    reused: bool  # training skipped: the inputs were trained before
    seconds: float

    @property
    def exit_code(self) -> int:
        return 0 if self.report.passed else 1


def run(ws: Workspace, *, promote: bool = True, say: Callable[[str], None] = print) -> CiResult:
    """One pass of the loop as a CI job runs it; ``say`` reports each step on one line."""
    started = time.monotonic()
    cfg = pipeline_config(ws)
    labels, _ = ingest(ws, cfg.labels_dataset)
    features, _ = ingest(ws, cfg.features.dataset)
    say(f"data: {labels.ref} ({labels.row_count} rows), {features.ref} ({features.row_count} rows)")
    apply_features(ws, features)
    train_rows, _ = frames(ws, labels)
    candidate = train(ws, labels, features, train_rows)
    say(f"candidate {candidate.fingerprint[:8]} {'reused (inputs unchanged)' if candidate.skipped else 'trained'}")
    baseline = production_model(ws, cfg.model_name)
    evaluation, key, _ = validate(ws, candidate, labels)
    report = evaluation.report
    say(f"gates against {baseline.ref if baseline else 'no production model'}: "
        + ", ".join(f"{c.name} {'ok' if c.passed else 'FAIL'}" for c in report.checks))
    existing = registered_version_of(ws, candidate) if candidate.skipped else None
    if existing is None:
        model, event = register_and_promote(ws, candidate, report, key, baseline.version if baseline else None,
                                            promote=promote)
    else:  # the same bytes were judged before (a pull request): today's verdict decides, no twin version
        model, event = _judged_again(ws, existing, report, key, baseline.version if baseline else None, promote)
        say(f"{model.ref} already holds this model; judged again: {'passed' if report.passed else 'failed'}")
    waiting = approvals.pending_for(ws, model) if report.passed and event is None else None
    production = production_model(ws, cfg.model_name)
    return CiResult(model, report, key, baseline.ref if baseline else None,
                    production is not None and production.version == model.version,
                    waiting.id if waiting is not None else None, candidate.skipped, time.monotonic() - started)


def _judged_again(ws: Workspace, model: ModelVersion, report: GateReport, report_key: str,
                  baseline_version: int | None, promote: bool) -> tuple[ModelVersion, PromotionEvent | None]:
    model = record_verdict(ws, model, report, report_key, by="judged again by loopml ci")
    production = production_model(ws, model.name)
    if not (report.passed and promote) or (production is not None and production.version == model.version):
        return model, None
    report_sha = hashlib.sha256(ws.store.get(report_key)).hexdigest()
    return model, release(ws, model, f"all gates passed (report {report_key})", report_sha, {"report": report_key},
                          baseline_version)


def junit_xml(result: CiResult) -> str:
    """One test suite, one test case per gate check; a failed check is a failure with its reason."""
    checks = result.report.checks
    failures = sum(not c.passed for c in checks)
    cases = []
    for check in checks:
        head = f'    <testcase classname={quoteattr(f"loopml.gates.{result.model.name}")} name={quoteattr(check.name)}'
        if check.passed:
            cases.append(f"{head}>\n      <system-out>{html.escape(check.reason, quote=False)}</system-out>\n"
                         "    </testcase>")
        else:
            cases.append(f"{head}>\n      <failure message={quoteattr(check.reason)} type=\"GateFailed\">"
                         f"{html.escape(_measured(check), quote=False)}</failure>\n    </testcase>")
    suite = (f'  <testsuite name={quoteattr(f"loopml gates: {result.model.ref}")} tests="{len(checks)}" '
             f'failures="{failures}" errors="0" skipped="0" time="{result.seconds:.3f}">')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuites name="loopml" tests="{len(checks)}" failures="{failures}" errors="0">\n'
            f"{suite}\n" + "\n".join(cases) + "\n  </testsuite>\n</testsuites>\n")


def _measured(check: object) -> str:
    value, threshold = getattr(check, "value", None), getattr(check, "threshold", None)
    return f"value {value!r}, threshold {threshold!r}: {getattr(check, 'reason', '')}"


def summary_markdown(result: CiResult, report_files: list[Path]) -> str:
    """The job summary: the verdict, what it was judged against, every check, where the reports are."""
    verdict = "APPROVED" if result.report.passed else "REJECTED"
    moved = ("promoted to production" if result.promoted else
             f"awaiting approval (request {result.awaiting_approval})" if result.awaiting_approval else
             "not promoted" if result.report.passed else "production unchanged")
    lines = [f"## loopml gate: {result.model.ref} {verdict}", "",
             f"Judged against {result.baseline or 'no production model (absolute gates only)'}; {moved}. "
             f"Training {'reused (inputs unchanged)' if result.reused else 'ran'}; {result.seconds:.1f} s.", "",
             *checks_markdown(result.report.checks)]
    if report_files:
        lines += ["", "Reports: " + ", ".join(f"`{p}`" for p in report_files)]
    return "\n".join(lines) + "\n"


def write_outputs(ws: Workspace, result: CiResult, *, junit: Path | None, summary: Path | None,
                  reports: Path) -> dict[str, str]:
    """JUnit, the summary (appended to ``$GITHUB_STEP_SUMMARY`` when set) and the report files."""
    reports.mkdir(parents=True, exist_ok=True)
    report_file = reports / result.report_key.rsplit("/", 1)[-1]
    report_file.write_bytes(ws.store.get(result.report_key))
    written = {"reports": str(reports), "report": str(report_file)}
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(result), encoding="utf-8")
        written["junit"] = str(junit)
    text = summary_markdown(result, [report_file])
    github = os.environ.get("GITHUB_STEP_SUMMARY")
    target = summary if summary is not None else Path(github) if github else reports / "summary.md"
    with open(target, "a", encoding="utf-8") as out:
        out.write(text)
    written["summary"] = str(target)
    return written
