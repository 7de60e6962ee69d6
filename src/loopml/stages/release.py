"""Stage 5 and 6: register a judged candidate with its lineage, then release it: straight to
production (compare-and-set), or as a canary next to production."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import approvals, canary, events
from loopml.capabilities import FlushingTracker
from loopml.context import current_actor
from loopml.errors import ApprovalRequiredError, ConfigError, StaleAliasError
from loopml.exports import export_model, model_card
from loopml.stages.project import PRODUCTION, pipeline_config, production_model, safely, view_of
from loopml.stages.training import environment, git_commit, git_dirty

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GateReport, ModelVersion, PromotionEvent
    from loopml.stages.training import Candidate

log = logging.getLogger(__name__)


def registered_version_of(ws: Workspace, candidate: Candidate) -> ModelVersion | None:
    """The registry version already holding this exact artifact, if any."""
    for model in ws.registry.list_versions(candidate.model_name):
        if model.artifact_sha256 == candidate.artifact_sha256:
            return model
    return None


def register_and_promote(ws: Workspace, candidate: Candidate, report: GateReport,
                         report_key: str, baseline_version: int | None,
                         promote: bool = True) -> tuple[ModelVersion, PromotionEvent | None]:
    """Register the candidate (approved or rejected); move production only if every gate passed.

    The move is a compare-and-set against the production version the candidate was validated
    against: if someone promoted meanwhile, the candidate stays approved but production does not
    move, since the comparison it won is stale. With a production model and a rollout mode other
    than ``direct``, an approved candidate becomes the canary instead.
    """
    cfg = pipeline_config(ws)
    info = ws.store.info(candidate.artifact_key)  # the registry only points at stored, hashed bytes
    if info.sha256 != candidate.artifact_sha256:
        raise ConfigError(f"artifact {candidate.artifact_key} changed since training")
    report_sha = hashlib.sha256(ws.store.get(report_key)).hexdigest()
    status = "approved" if report.passed else "rejected"
    reason = ("all gates passed" if report.passed else
              "rejected: " + "; ".join(f"{c.name}: {c.reason}" for c in report.failed_checks))
    model = ws.registry.register(
        cfg.model_name, artifact_key=candidate.artifact_key, artifact_sha256=candidate.artifact_sha256,
        status=status, actor=current_actor(), reason=reason,
        dataset_version=candidate.dataset_versions["labels"], git_commit=git_commit(ws.config.root),
        run_id=candidate.run_id, params=candidate.params,
        metrics={**candidate.metrics, **{f"holdout_{k}": v for k, v in report.metrics.items()}},
        environment=environment(),
        lineage={"datasets": candidate.dataset_versions, "fingerprint": candidate.fingerprint,
                 "feature_view": cfg.features.view, "features": list(view_of(ws).features),
                 "entity": cfg.entity, "task": cfg.task, "validation_report": report_key,
                 "profile": ws.config.profile, "git_dirty": git_dirty(ws.config.root),
                 "importance": dict(report.importance),
                 "validation_report_sha256": report_sha,
                 "gates": {c.name: {"passed": c.passed, "value": c.value} for c in report.checks}},
    )
    _tell_the_training_run(ws, candidate, model, report, report_key)
    gates = _gate_payload(report, report_key)
    if report.passed:  # a readable copy for tools outside loopml (KServe storageUri, MLflow, a browser)
        try:
            gates["export"] = export_model(ws, model, report)
        except Exception as exc:
            log.warning("export of %s failed (the loop goes on): %s", model.ref, exc)
    events.announce(ws, events.make_event(ws, events.REGISTERED, model.name, model.version, reason,
                                          {"status": model.status, **gates}), subject=model)
    if not report.passed:
        events.announce(ws, events.make_event(ws, events.REJECTED, model.name, model.version, reason, gates))
        return model, None
    if not promote:  # judged and recorded (a pull request's gate): promotion is another step
        return model, None
    return model, release(ws, model, reason, report_sha, gates, baseline_version)


def release(ws: Workspace, model: ModelVersion, reason: str, report_sha: str | None, gates: dict[str, Any],
            baseline_version: int | None) -> PromotionEvent | None:
    """Move an approved version toward production as the rollout says: straight (compare-and-set
    against the production it was judged against) or as a canary; stops at "awaiting approval"
    under an approval policy. None when nothing moved."""
    cfg = pipeline_config(ws)
    policy = cfg.rollout
    if baseline_version is not None and policy.mode != "direct":
        current = production_model(ws, cfg.model_name)
        if current is None or current.version != baseline_version:
            log.warning("not starting a canary of %s: production moved from v%s to %s since validation",
                        model.ref, baseline_version, current.ref if current else "nothing")
            return None
        return canary.start(ws, model, reason=f"{reason}; {policy.mode} before production moves")
    try:
        event = ws.registry.set_alias(cfg.model_name, PRODUCTION, model.version, expected=baseline_version,
                                      actor=current_actor(), reason=reason, evidence_sha256=report_sha)
    except StaleAliasError as exc:
        log.warning("not promoting %s: %s", model.ref, exc)
        return None
    except ApprovalRequiredError:  # the policy governs production: the loop stops at "awaiting approval"
        approvals.request(ws, model, PRODUCTION, expected=baseline_version, reason=reason)
        return None
    events.announce_move(ws, event, gates)
    return event


def _gate_payload(report: GateReport, report_key: str) -> dict[str, Any]:
    checks = {c.name: {"passed": c.passed, "value": c.value, "threshold": c.threshold} for c in report.checks}
    return {"checks": checks, "metrics": dict(report.metrics), "baseline": report.baseline, "report": report_key}


def _tell_the_training_run(ws: Workspace, candidate: Candidate, model: ModelVersion, report: GateReport,
                           report_key: str) -> None:
    """The training run learns what it became: registry version, gate numbers, card and report."""
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "model_card.md"
        card.write_text(model_card(model, report), encoding="utf-8")
        html = Path(tmp) / "validation_report.html"
        html.write_bytes(ws.store.get(report_key))
        gate_metrics = {**{f"holdout_{k}": float(v) for k, v in report.metrics.items()},
                        **{f"gate_{c.name}": float(c.value) for c in report.checks
                           if isinstance(c.value, int | float) and not isinstance(c.value, bool)}}
        for tracker in ws.trackers:  # the gate numbers as metrics: runs sort and compare on them
            safely(tracker.log_metrics, candidate.run_id, gate_metrics, 0)
            safely(tracker.set_tags, candidate.run_id, {"loopml.registry_version": model.ref,
                                                        "loopml.registry_status": model.status})
            safely(tracker.log_artifact, candidate.run_id, card)
            safely(tracker.log_artifact, candidate.run_id, html)
            flushing = ws.ability(tracker, FlushingTracker)  # W&B finishes the run here
            if flushing is not None:
                safely(flushing.flush, candidate.run_id)
