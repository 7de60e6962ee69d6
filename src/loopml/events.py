"""One path for everything that happens to a model: hooks, monitors and a Prefect event.

Flows and the CLI alike call :func:`announce`. It

1. calls the matching lifecycle hook (``loopml_after_promotion``, ``loopml_on_drift``) and the
   general ``loopml_on_event`` in every plugin (a raise is recorded, never propagated);
2. hands the event to every monitor: ``on_promotion`` / ``on_drift`` for those two kinds, and
   ``on_event`` for every kind where the monitor has one;
3. emits a Prefect event whose resource is ``loopml.model.<project>.<model>`` and carries
   ``loopml.project`` and ``loopml.model`` labels, so a trigger in ``deployments/prefect.yaml``
   retrains the right project even when many share one work pool.

The Prefect event is sent when a Prefect API is configured (``PREFECT_API_URL``) or inside a flow
run; a CLI call with neither does not start a temporary Prefect server just to say it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loopml.records import LoopEvent

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import DriftReport, PromotionEvent

log = logging.getLogger(__name__)

VALIDATED = "loopml.model.validated"
"""Gates ran on a candidate (payload: every check's value, threshold and verdict)."""
REJECTED = "loopml.model.rejected"
"""A candidate failed a gate, or its canary was rolled back; production did not move to it."""
PROMOTED = "loopml.model.promoted"
"""An alias moved forward (``payload.alias``; by the pipeline, a canary verdict or a person)."""
ROLLED_BACK = "loopml.model.rolled-back"
"""An alias moved back to an earlier version (by a person or a failed canary)."""
CANARY_STARTED = "loopml.canary.started"
"""A candidate receives a canary share of traffic (or a shadow copy) next to production."""
DRIFT_CHECKED = "loopml.drift.checked"
"""A drift check ran (payload: per-feature statistics, rows, whether drift was confirmed)."""
DRIFT = "loopml.drift.detected"
"""Live inputs or outputs drifted from the training reference (confirmed, after cooldown)."""
PERFORMANCE = "loopml.performance.measured"
"""Delayed labels were joined to predictions: the task's metric per version over a window."""
DEGRADED = "loopml.performance.degraded"
"""Live performance fell below the bound (``[pipeline.monitoring]``); triggers retraining."""

KINDS: tuple[str, ...] = (VALIDATED, REJECTED, PROMOTED, ROLLED_BACK, CANARY_STARTED, DRIFT_CHECKED, DRIFT,
                          PERFORMANCE,
                          DEGRADED)


def make_event(ws: Workspace, kind: str, model: str, version: int | None, reason: str,
               payload: Mapping[str, Any] | None = None, actor: str | None = None) -> LoopEvent:
    from loopml.context import current_actor

    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return LoopEvent(kind, ws.config.project, model, version, reason, actor or current_actor(),
                     dict(payload or {}), time.time())


def promotion_event(ws: Workspace, promotion: PromotionEvent, payload: Mapping[str, Any] | None = None) -> LoopEvent:
    kind = ROLLED_BACK if promotion.action == "rollback" else PROMOTED
    body = {"alias": promotion.alias, "from_version": promotion.from_version, "to_version": promotion.to_version,
            **(payload or {})}
    return make_event(ws, kind, promotion.name, promotion.to_version, promotion.reason, body, promotion.actor)


def announce(ws: Workspace, event: LoopEvent, *, promotion: PromotionEvent | None = None,
             drift: DriftReport | None = None) -> None:
    """Tell hooks, monitors and Prefect. Never raises for a failing listener (it is logged)."""
    if promotion is not None:
        ws.notify("loopml_after_promotion", event=promotion)
    if drift is not None:
        ws.notify("loopml_on_drift", report=drift)
    ws.notify("loopml_on_event", event=event)
    for monitor in ws.monitors:
        calls = []
        if promotion is not None:
            calls.append((monitor.on_promotion, promotion))
        if drift is not None:
            calls.append((monitor.on_drift, drift))
        on_event = getattr(monitor, "on_event", None)
        if callable(on_event):
            calls.append((on_event, event))
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
    try:
        from prefect.context import FlowRunContext
    except ImportError:
        return False
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
    resource = {"prefect.resource.id": event.resource_id, "prefect.resource.name": event.model,
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
    import json

    return json.loads(json.dumps(obj, default=str))
