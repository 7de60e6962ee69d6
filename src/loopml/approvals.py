"""Promotion under an approval policy: the loop asks, people decide, the registry enforces.

The registry refuses to move a governed alias without an approved request
(:class:`loopml.errors.ApprovalRequiredError`); automated promotion (gates, a passed canary) then
stops here, at "awaiting approval": :func:`request` records the request and announces it. A person's
:func:`decide` records one approval or rejection; the approval that completes the policy's count
moves the alias in the same registry transaction, and both facts are announced as events.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from loopml import events
from loopml.capabilities import GovernedRegistry
from loopml.context import current_actor
from loopml.errors import RegistryError

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import ModelVersion, PromotionEvent, PromotionRequest

log = logging.getLogger(__name__)


def governed(ws: Workspace) -> GovernedRegistry:
    registry = ws.ability(ws.registry, GovernedRegistry)
    if registry is None:
        raise RegistryError(f"the registry backend {ws.selected['registry'].spec.name!r} has no approvals; "
                            "use the sqlite or postgres registry")
    return registry


def request(ws: Workspace, model: ModelVersion, alias: str, *, expected: int | None, reason: str,
            clear_canary: bool = False, actor: str | None = None) -> PromotionRequest:
    """Ask for ``model`` to become ``alias`` and announce it (once per pending request)."""
    registry = governed(ws)
    before = {r.id for r in registry.promotion_requests(model.name)}
    made = registry.request_promotion(model.name, model.version, alias, expected=expected,
                                      actor=actor or current_actor(), reason=reason, clear_canary=clear_canary)
    log.warning("%s awaiting approval to become %s (request %d, %d approval(s) needed): `loopml models approve %d`",
                model.ref, alias, made.id, made.required, made.id)
    if made.id not in before:
        events.announce(ws, events.make_event(
            ws, events.PROMOTION_REQUESTED, model.name, model.version, reason,
            {"request": made.id, "alias": alias, "expected": expected, "required": made.required},
            actor=made.requested_by))
    return made


def decide(ws: Workspace, request_id: int, decision: str, *, reason: str,
           actor: str | None = None) -> tuple[PromotionRequest, PromotionEvent | None]:
    """Approve or reject request ``request_id`` as ``actor``; announce the decision and any move."""
    made, move = governed(ws).decide(request_id, decision, actor=actor or current_actor(), reason=reason)
    decided_by = made.decisions[-1].actor if made.decisions else (actor or current_actor())
    events.announce(ws, events.make_event(
        ws, events.PROMOTION_DECIDED, made.name, made.version, reason,
        {"request": made.id, "alias": made.alias, "decision": decision, "state": made.state,
         "approvals": list(made.approvals), "required": made.required}, actor=decided_by))
    if move is not None:
        events.announce_move(ws, move, {"request": made.id, "approved_by": list(made.approvals)})
    return made, move


def pending_for(ws: Workspace, model: ModelVersion) -> PromotionRequest | None:
    """The pending request of ``model`` (any alias), if the registry has approvals and one waits."""
    registry = ws.ability(ws.registry, GovernedRegistry)
    if registry is None:
        return None
    return next((r for r in registry.promotion_requests(model.name) if r.version == model.version), None)
