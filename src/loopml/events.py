"""The event spine: every lifecycle fact of the loop is one :class:`LoopEvent` through :func:`announce`.

Stages, flows, the CLI and ``loopml serve`` alike call :func:`announce`. For each event it

1. calls the specific lifecycle hook derived from the event's kind (the table :data:`DERIVED_HOOKS`,
   the only place where kinds meet hooks: ``loopml.model.validated`` becomes
   ``loopml_after_validation``, a promotion ``loopml_after_promotion``, …), then the general
   ``loopml_on_event``, in every plugin (a raise is recorded, never propagated). A plugin that
   implements both a specific hook and ``loopml_on_event`` hears the fact through each: pick one;
2. hands the event to every monitor: ``on_promotion`` / ``on_drift`` for those facts, and
   ``on_event`` for every kind where the monitor has one (:class:`loopml.protocols.EventMonitor`);
3. emits a Prefect event whose resource is ``loopml.model.<project>.<model>`` (for a dataset,
   ``loopml.dataset.<project>.<dataset>``) and carries ``loopml.project`` and ``loopml.model``
   labels, so a trigger in ``deployments/prefect.yaml`` retrains the right project even when many
   share one work pool.

The Prefect event is sent when a Prefect API is configured (``PREFECT_API_URL``) or inside a flow
run; a CLI call with neither does not start a temporary Prefect server just to say it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from loopml.context import current_actor
from loopml.protocols import EventMonitor
from loopml.records import LoopEvent, TrainedRun

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import DatasetVersion, GateReport, PromotionEvent

log = logging.getLogger(__name__)

DATASET_VERSIONED = "loopml.dataset.versioned"
"""A dataset was validated and versioned (payload: dataset, id, rows, whether the version is new)."""
TRAINED = "loopml.model.trained"
"""A candidate was trained and tracked (payload: run id, artifact key, last epoch's metrics)."""
VALIDATED = "loopml.model.validated"
"""Gates ran on a candidate, before it is registered (payload: every check's value, threshold and
verdict; ``version`` is None: the candidate has no registry version yet)."""
REGISTERED = "loopml.model.registered"
"""A judged candidate became a registry version, approved or rejected (payload: status, gates, export)."""
REJECTED = "loopml.model.rejected"
"""A candidate failed a gate, or its canary was rolled back; production did not move to it."""
PROMOTED = "loopml.model.promoted"
"""An alias moved forward (``payload.alias``; by the pipeline, a canary verdict or a person)."""
ROLLED_BACK = "loopml.model.rolled-back"
"""An alias moved back to an earlier version (by a person or a failed canary)."""
CLEARED = "loopml.model.alias-cleared"
"""An alias was removed with the move that ended its role (``canary`` once production moved to it, or
when the production it was judged against was rolled back); ``payload.to_version`` is None."""
CANARY_STARTED = "loopml.canary.started"
"""A candidate receives a canary share of traffic (or a shadow copy) next to production."""
PROMOTION_REQUESTED = "loopml.model.promotion-requested"
"""A move of an alias the approval policy governs was requested and awaits approval (payload: request
id, alias, expected version, approvals required)."""
PROMOTION_DECIDED = "loopml.model.promotion-decided"
"""Someone approved or rejected a promotion request (payload: request id, decision, state after it:
pending, promoted, rejected or stale); a completed approval is followed by ``loopml.model.promoted``."""
DRIFT_CHECKED = "loopml.drift.checked"
"""A drift check ran (payload: per-feature statistics, rows, whether drift was confirmed)."""
DRIFT = "loopml.drift.detected"
"""Live inputs or outputs drifted from the training reference (confirmed, after cooldown)."""
PERFORMANCE = "loopml.performance.measured"
"""Delayed labels were joined to predictions: the task's metric per version over a window."""
DEGRADED = "loopml.performance.degraded"
"""Live performance fell below the bound (``[pipeline.monitoring]``); triggers retraining."""

KINDS: tuple[str, ...] = (DATASET_VERSIONED, TRAINED, VALIDATED, REGISTERED, REJECTED, PROMOTED, ROLLED_BACK,
                          CLEARED, CANARY_STARTED, PROMOTION_REQUESTED, PROMOTION_DECIDED, DRIFT_CHECKED, DRIFT,
                          PERFORMANCE, DEGRADED)

_ALIAS_MOVES = (PROMOTED, ROLLED_BACK, CLEARED, CANARY_STARTED)

DERIVED_HOOKS: dict[str, tuple[str, Callable[[LoopEvent, Any], dict[str, Any]]]] = {
    DATASET_VERSIONED: ("loopml_after_dataset_versioned",
                        lambda e, dataset: {"dataset": dataset, "created": bool(e.payload.get("created"))}),
    TRAINED: ("loopml_after_model_trained",
              lambda e, t: {"run": t.run, "artifact_key": t.artifact_key, "metrics": dict(t.metrics)}),
    VALIDATED: ("loopml_after_validation", lambda e, report: {"report": report}),
    REGISTERED: ("loopml_after_model_registered", lambda e, model: {"model": model}),
    **{kind: ("loopml_after_promotion", lambda e, move: {"event": move}) for kind in _ALIAS_MOVES},
    DRIFT: ("loopml_on_drift", lambda e, report: {"report": report}),
}
"""Event kind -> (the specific lifecycle hook it fires, its arguments from the event and its subject)."""


def make_event(ws: Workspace, kind: str, model: str, version: int | None, reason: str,
               payload: Mapping[str, Any] | None = None, actor: str | None = None) -> LoopEvent:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return LoopEvent(kind, ws.config.project, model, version, reason, actor or current_actor(),
                     dict(payload or {}), time.time())


def dataset_versioned_event(ws: Workspace, version: DatasetVersion, created: bool) -> LoopEvent:
    model = ws.config.pipeline.model_name if ws.config.pipeline is not None else ""
    return make_event(ws, DATASET_VERSIONED, model, None,
                      f"{version.ref}: {version.row_count} rows{'' if created else ' (unchanged)'}",
                      {"dataset": version.name, "id": version.id, "ref": version.ref, "rows": version.row_count,
                       "created": created})


def trained_event(ws: Workspace, model: str, trained: TrainedRun) -> LoopEvent:
    return make_event(ws, TRAINED, model, None, f"trained in run {trained.run.run_id}",
                      {"run_id": trained.run.run_id, "artifact_key": trained.artifact_key,
                       "metrics": dict(trained.metrics)})


def validated_event(ws: Workspace, report: GateReport, report_key: str, fingerprint: str) -> LoopEvent:
    checks = {c.name: {"passed": c.passed, "value": c.value, "threshold": c.threshold} for c in report.checks}
    reason = ("all gates passed" if report.passed else
              "rejected: " + "; ".join(f"{c.name}: {c.reason}" for c in report.failed_checks))
    return make_event(ws, VALIDATED, report.model_name, None, reason,
                      {"candidate": report.candidate, "fingerprint": fingerprint, "passed": report.passed,
                       "checks": checks, "metrics": dict(report.metrics), "baseline": report.baseline,
                       "report": report_key})


def promotion_event(ws: Workspace, promotion: PromotionEvent, payload: Mapping[str, Any] | None = None,
                    kind: str | None = None) -> LoopEvent:
    """The LoopEvent of an alias move: promoted, rolled back or cleared (``kind`` overrides it: a
    rejected canary's cleared alias is a rollback of that canary)."""
    kind = kind or {"promote": PROMOTED, "rollback": ROLLED_BACK, "clear": CLEARED}[promotion.action]
    body = {"alias": promotion.alias, "from_version": promotion.from_version, "to_version": promotion.to_version,
            **(payload or {})}
    version = promotion.to_version if promotion.to_version is not None else promotion.from_version
    return make_event(ws, kind, promotion.name, version, promotion.reason, body, promotion.actor)


def announce_move(ws: Workspace, promotion: PromotionEvent, payload: Mapping[str, Any] | None = None,
                  kind: str | None = None) -> None:
    """Announce an alias move (as ``kind`` if given) and every alias its transaction cleared."""
    announce(ws, promotion_event(ws, promotion, payload, kind), subject=promotion)
    for cleared in promotion.cleared:
        announce(ws, promotion_event(ws, cleared, payload), subject=cleared)


_LISTENERS: contextvars.ContextVar[tuple[list[tuple[LoopEvent, Any]], ...]] = contextvars.ContextVar(
    "loopml_event_listeners", default=())


@contextlib.contextmanager
def collecting() -> Iterator[list[tuple[LoopEvent, Any]]]:
    """Collect every (event, subject) announced in this context (a flow run's OpenLineage outputs)."""
    found: list[tuple[LoopEvent, Any]] = []
    token = _LISTENERS.set((*_LISTENERS.get(), found))
    try:
        yield found
    finally:
        _LISTENERS.reset(token)


def announce(ws: Workspace, event: LoopEvent, *, subject: Any = None) -> None:
    """Tell hooks, monitors and Prefect about ``event``. ``subject`` is the typed record the fact is
    about (a DatasetVersion, GateReport, ModelVersion, PromotionEvent, DriftReport…), which the
    specific hook and monitor verbs receive. Never raises for a failing listener (it is logged)."""
    for found in _LISTENERS.get():
        found.append((event, subject))
    derived = DERIVED_HOOKS.get(event.kind)
    if derived is not None and subject is not None:
        hook, arguments = derived
        ws.notify(hook, **arguments(event, subject))
    ws.notify("loopml_on_event", event=event)
    for monitor in ws.monitors:
        calls: list[tuple[Callable[[Any], None], Any]] = []
        if subject is not None and event.kind in _ALIAS_MOVES:
            calls.append((monitor.on_promotion, subject))
        if subject is not None and event.kind == DRIFT:
            calls.append((monitor.on_drift, subject))
        if isinstance(monitor, EventMonitor):
            calls.append((monitor.on_event, event))
        for fn, arg in calls:
            try:
                fn(arg)
            except Exception as exc:
                log.warning("monitor %r failed on %s (the loop goes on): %s", monitor.name, event.kind, exc)
    emit_prefect_event(event)


def prefect_available() -> bool:
    """A Prefect API to send to: configured, or the flow run we are in."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect" not in sys.modules:  # no flow runs in a process that never imported Prefect
        return False  # (importing it only to find that out costs a CLI command a second)
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def emit_prefect_event(event: LoopEvent) -> bool:
    """Emit ``event`` to Prefect if an API is there; True if it was handed to Prefect."""
    if not prefect_available():
        log.debug("no Prefect API configured: %s not sent to Prefect", event.kind)
        return False
    try:
        from prefect.events import emit_event
    except ImportError:
        return False
    resource = {"prefect.resource.id": event.resource_id,
                "prefect.resource.name": event.payload.get("dataset", event.model) if event.kind == DATASET_VERSIONED
                else event.model,
                "loopml.project": event.project, "loopml.model": event.model}
    if event.version is not None:
        resource["loopml.version"] = str(event.version)
    try:
        sent = emit_event(event=event.kind, resource=resource,
                          payload={"reason": event.reason, "actor": event.actor, "version": event.version,
                                   **_jsonable(event.payload)})
    except Exception as exc:  # Prefect unreachable: the registry already holds the truth
        log.warning("could not emit %s to Prefect: %s", event.kind, exc)
        return False
    return sent is not None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
