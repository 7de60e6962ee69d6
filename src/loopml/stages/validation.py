"""Stage 4: every gate on the same holdout rows, the candidate against production; the HTML report."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from loopml import events, validation
from loopml.artifacts import Predictor
from loopml.records import GateCheck
from loopml.stages.data import frames
from loopml.stages.project import pipeline_config, production_model, stamp, view_of

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import DatasetVersion
    from loopml.stages.training import Candidate
    from loopml.validation import Evaluation


def validate(ws: Workspace, candidate: Candidate, labels: DatasetVersion,
             rows_from: Workspace | None = None) -> tuple[Evaluation, str, str]:
    """Run every gate on the holdout rows of ``labels``, then the promotion veto; store the HTML
    report and announce ``loopml.model.validated`` (``loopml_after_validation`` derives from it).
    ``rows_from`` joins the holdout rows in another workspace (a scratch one holding the recorded
    feature rows, when an existing version is re-judged).

    Returns (evaluation, report key, html)."""
    cfg = pipeline_config(ws)
    artifact = ws.store.get(candidate.artifact_key)
    cand = Predictor.from_bytes(artifact)
    prod = production_model(ws, cfg.model_name)
    baseline = Predictor.from_bytes(ws.store.get(prod.artifact_key)) if prod else None
    extra = (*baseline.signature.numeric, *baseline.signature.categorical) if baseline else ()
    _, holdout = frames(rows_from or ws, labels, extra)
    sample = holdout[list(view_of(ws).features)].head(5).to_dict("records")
    evaluation = validation.evaluate(
        model_name=cfg.model_name, candidate_ref=f"{candidate.model_name} candidate {candidate.fingerprint[:8]}",
        candidate=cand, baseline_ref=prod.ref if prod else None, baseline=baseline, holdout=holdout,
        label=cfg.label, sensitive=cfg.sensitive_attribute, gates=cfg.gates, thresholds=cfg.thresholds,
        servability=lambda: ws.serving.smoke_test(artifact, sample) if sample else (False, "no holdout rows"),
        extra_checks=ws.gate_checks,
    )
    if evaluation.report.passed:
        veto = ws.manager.first_veto(context=ws.hook_context, model_name=cfg.model_name,
                                     candidate=evaluation.report.candidate, report=evaluation.report)
        if veto is not None:
            blocked = GateCheck("promotion-veto", None, None, False, veto)
            evaluation = dataclasses.replace(evaluation, report=dataclasses.replace(
                evaluation.report, checks=(*evaluation.report.checks, blocked)))
    html = validation.render_html(evaluation)
    key = f"reports/{cfg.model_name}/{candidate.fingerprint[:16]}/validation-{stamp()}.html"
    ws.store.put(key, html.encode(), metadata={"content-type": "text/html"})
    report = evaluation.report
    events.announce(ws, events.validated_event(ws, report, key, candidate.fingerprint), subject=report)
    return evaluation, key, html
