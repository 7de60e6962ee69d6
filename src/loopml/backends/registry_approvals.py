"""Approvals with separation of duties, checked inside the registry's own write transaction.

The policy lives in the registry database (``approval_policies``: approvals needed per alias), so
every process that writes the registry enforces the same rule, whatever its ``loopml.toml`` says;
``[approvals]`` in ``loopml.toml`` is applied to it (and each change is recorded in history).

Under a policy an alias moves forward only through a request: :func:`open_request` records it, each
approver's :func:`record_decision` adds one decision, and the decision that completes the count
moves the alias in the same transaction (:class:`loopml.backends.sql_registry.SqlRegistry`). An
approver may be neither whoever requested the move nor whoever registered the version; on PostgreSQL
both sides are database roles, written by triggers, so a client cannot claim another identity.
A rollback needs no approval only to a version the alias held before (it was approved then).

Every function here runs on a connection inside the caller's transaction, which holds the model's
write lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from loopml.backends.registry_schema import reachable
from loopml.errors import ApprovalRequiredError, ModelNotFoundError, RegistryError, SeparationOfDutiesError
from loopml.records import ApprovalDecision, PromotionEvent, PromotionRequest

POLICY_HISTORY_NAME = "*"  # history rows about the whole registry (policy changes) use this model name


def _q(conn: Any, sql: str, **params: Any) -> Any:
    from sqlalchemy import text

    return conn.execute(text(sql), params)


def policy(conn: Any) -> dict[str, int]:
    """Approvals needed per alias (aliases absent from it need none)."""
    return {r[0]: int(r[1]) for r in _q(conn, "SELECT alias, approvals FROM approval_policies ORDER BY alias")
            if int(r[1]) > 0}


def apply_policy(conn: Any, wanted: Mapping[str, int], *, actor: str, at: str) -> dict[str, tuple[int, int]]:
    """Set the approvals of each alias in ``wanted`` (0 removes the rule); returns what changed as
    ``{alias: (before, after)}`` for the caller to record."""
    current = policy(conn)
    changed: dict[str, tuple[int, int]] = {}
    for alias, count in sorted(wanted.items()):
        if count < 0:
            raise RegistryError(f"approvals for {alias!r} must be 0 or more, not {count}")
        before = current.get(alias, 0)
        if before == count:
            continue
        _q(conn, "DELETE FROM approval_policies WHERE alias = :a", a=alias)
        if count:
            _q(conn, "INSERT INTO approval_policies (alias, approvals, updated_at, updated_by) "
                     "VALUES (:a, :n, :t, :by)", a=alias, n=count, t=at, by=actor)
        changed[alias] = (before, count)
    return changed


def held_before(conn: Any, name: str, alias: str, version: int) -> bool:
    """``version`` was moved to ``alias`` before (so returning to it undoes a later move)."""
    return _q(conn, """SELECT 1 FROM history WHERE name = :n AND alias = :a AND to_version = :v
              AND action IN ('promote', 'rollback') LIMIT 1""", n=name, a=alias, v=version).first() is not None


def guard(conn: Any, name: str, alias: str, version: int, action: str, *, approved: bool) -> None:
    """Refuse a move the policy governs unless it completes an approved request (``approved``).
    A rollback passes when the alias held that version before."""
    needed = policy(conn).get(alias, 0)
    if not needed or approved or (action == "rollback" and held_before(conn, name, alias, version)):
        return
    raise ApprovalRequiredError(
        f"{name}@{alias} moves only with {needed} approval(s) (the registry's approval policy): run "
        f"`loopml models request-promotion {name}:{version} --alias {alias}`, then someone other than whoever "
        f"trained or requested it runs `loopml models approve REQUEST_ID`")


def open_request(conn: Any, name: str, version: int, alias: str, *, expected: int | None, identity: str,
                 reason: str, clear_canary: bool, at: str) -> tuple[int, bool]:
    """The pending request to move ``alias`` to ``version`` (a new one unless one is pending);
    returns (its id, whether it is new)."""
    row = _q(conn, """SELECT id FROM promotion_requests WHERE name = :n AND version = :v AND alias = :a
             AND state = 'pending' ORDER BY id LIMIT 1""", n=name, v=version, a=alias).first()
    if row is not None:
        return int(row[0]), False
    _q(conn, """INSERT INTO promotion_requests (name, version, alias, expected_version, state, requested_by,
           requested_at, reason, clear_canary) VALUES (:n, :v, :a, :e, 'pending', :by, :t, :r, :c)""",
       n=name, v=version, a=alias, e=expected, by=identity, t=at, r=reason, c=clear_canary)
    new = _q(conn, """SELECT MAX(id) FROM promotion_requests WHERE name = :n AND version = :v AND alias = :a""",
             n=name, v=version, a=alias).scalar_one()
    return int(new), True


def record_decision(conn: Any, request_id: int, decision: str, *, identity: str, reason: str,
                    at: str) -> PromotionRequest:
    """Add one decision to a pending request, refusing whoever requested it or registered its
    version and anyone who already decided; returns the request as it now stands (still pending
    until the caller moves the alias or closes it)."""
    request = load_request(conn, request_id)
    if request.state != "pending":
        raise RegistryError(f"request {request_id} is {request.state}, not pending: nothing to decide")
    trained_by = _q(conn, "SELECT COALESCE(registered_as, created_by) FROM versions WHERE name = :n AND version = :v",
                    n=request.name, v=request.version).scalar_one()
    if identity == request.requested_by:
        raise SeparationOfDutiesError(f"{identity} requested this promotion and cannot also decide it: someone "
                                      "else approves or rejects request " + str(request_id))
    if identity == trained_by and decision == "approve":
        raise SeparationOfDutiesError(f"{identity} registered {request.name}:v{request.version} (trained it) and "
                                      f"cannot approve it: someone else approves request {request_id}")
    if identity in {d.actor for d in request.decisions}:
        raise SeparationOfDutiesError(f"{identity} already decided request {request_id}; one decision per person")
    _q(conn, """INSERT INTO approval_decisions (request_id, actor, decision, reason, at)
           VALUES (:r, :a, :d, :why, :t)""", r=request_id, a=identity, d=decision, why=reason, t=at)
    return load_request(conn, request_id)


def close_request(conn: Any, request_id: int, state: str, at: str) -> None:
    _q(conn, "UPDATE promotion_requests SET state = :s, closed_at = :t WHERE id = :i", s=state, t=at, i=request_id)


def load_request(conn: Any, request_id: int) -> PromotionRequest:
    row = _q(conn, "SELECT * FROM promotion_requests WHERE id = :i", i=request_id).mappings().first()
    if row is None:
        raise ModelNotFoundError(f"no promotion request {request_id}; see `loopml models requests`")
    return _to_request(conn, row, policy(conn))


def requests(conn: Any, name: str | None, *, pending_only: bool) -> list[PromotionRequest]:
    where, params = [], {}
    if name is not None:
        where.append("name = :n")
        params["n"] = name
    if pending_only:
        where.append("state = 'pending'")
    sql = "SELECT * FROM promotion_requests" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    rules = policy(conn)
    return [_to_request(conn, row, rules) for row in _q(conn, sql, **params).mappings().all()]


def request_of(conn: Any, request_id: int) -> tuple[str, bool]:
    """(model name, clear the canary on approval) of a request, read before taking the model's lock."""
    row = _q(conn, "SELECT name, clear_canary FROM promotion_requests WHERE id = :i", i=request_id).first()
    if row is None:
        raise ModelNotFoundError(f"no promotion request {request_id}; see `loopml models requests`")
    return str(row[0]), bool(row[1])


def _to_request(conn: Any, row: Any, rules: Mapping[str, int]) -> PromotionRequest:
    decisions = tuple(ApprovalDecision(d["actor"], d["decision"], d["reason"], datetime.fromisoformat(d["at"]))
                      for d in _q(conn, "SELECT * FROM approval_decisions WHERE request_id = :r ORDER BY id",
                                  r=row["id"]).mappings().all())
    return PromotionRequest(
        id=int(row["id"]), name=row["name"], version=int(row["version"]), alias=row["alias"],
        expected=None if row["expected_version"] is None else int(row["expected_version"]), state=row["state"],
        requested_by=row["requested_by"], requested_at=datetime.fromisoformat(row["requested_at"]),
        reason=row["reason"], required=max(rules.get(row["alias"], 0), 1), decisions=decisions)


def now() -> str:
    return datetime.now(UTC).isoformat()


class ApprovalsMixin:
    """The approval verbs of :class:`loopml.backends.sql_registry.SqlRegistry` (its transactions,
    history and alias moves do the writing)."""

    _tx: Any
    _alias: Any
    _append: Any
    _identity: Any
    _move: Any
    _clear: Any
    _version_row: Any
    engine: Any

    @reachable
    def policy(self) -> dict[str, int]:
        """Approvals needed per alias (an alias not listed moves without approval)."""
        with self.engine.connect() as conn:
            return policy(conn)

    @reachable
    def apply_policy(self, wanted: Mapping[str, int], *, actor: str) -> dict[str, tuple[int, int]]:
        """Set approvals per alias (0 removes the rule); each change goes into history (model ``*``)."""
        with self._tx(POLICY_HISTORY_NAME) as conn:
            at = now()
            changed = apply_policy(conn, wanted, actor=self._identity(conn, actor), at=at)
            for alias, (before, after) in changed.items():
                self._append(conn, POLICY_HISTORY_NAME, "policy", alias, before, after, self._identity(conn, actor),
                             f"approvals to move {alias}: {before} -> {after}", None, at)
        return changed

    @reachable
    def request_promotion(self, name: str, version: int, alias: str, *, expected: int | None, actor: str,
                          reason: str, clear_canary: bool = False) -> PromotionRequest:
        """Ask to move ``alias`` to ``version`` (compare-and-set against ``expected`` when approved);
        the pending request for the same move is returned instead of a second one."""
        with self._tx(name) as conn:
            if self._version_row(conn, name, version)["status"] == "rejected":
                raise RegistryError(f"{name} v{version} was rejected; it cannot become {alias!r}")
            at, identity = now(), self._identity(conn, actor)
            request_id, new = open_request(conn, name, version, alias, expected=expected, identity=identity,
                                           reason=reason, clear_canary=clear_canary, at=at)
            if new:
                self._append(conn, name, "request", alias, expected, version, identity,
                             f"request {request_id}: {reason}", None, at)
            return load_request(conn, request_id)

    @reachable
    def decide(self, request_id: int, decision: str, *, actor: str,
               reason: str) -> tuple[PromotionRequest, PromotionEvent | None]:
        """Approve or reject a pending request. The approval that completes the policy's count moves
        the alias in the same transaction (and clears a canary of that version when the request
        came from one); a request whose alias moved meanwhile becomes ``stale`` instead."""
        if decision not in ("approve", "reject"):
            raise RegistryError(f"decision {decision!r}: use 'approve' or 'reject'")
        with self.engine.connect() as conn:
            name, clear_canary = request_of(conn, request_id)
        with self._tx(name) as conn:
            at, identity = now(), self._identity(conn, actor)
            request = record_decision(conn, request_id, decision, identity=identity, reason=reason, at=at)
            self._append(conn, name, decision, request.alias, request.expected, request.version, identity,
                         f"request {request_id}: {reason}", None, at)
            event = None
            if decision == "reject":
                close_request(conn, request_id, "rejected", at)
            elif len(request.approvals) >= request.required:
                if self._alias(conn, name, request.alias) != request.expected:
                    close_request(conn, request_id, "stale", at)
                else:
                    event = self._move(conn, name, request.alias, request.version, expected=request.expected,
                                       actor=identity, reason=f"approved (request {request_id}): {request.reason}",
                                       evidence_sha256=None, action="promote", approved=True)
                    canary = self._alias(conn, name, "canary")
                    if clear_canary and canary == request.version:
                        cleared = self._clear(conn, name, "canary", expected=canary, actor=identity,
                                              reason=f"approved (request {request_id})")
                        event = dataclasses.replace(event, cleared=(cleared,) if cleared else ())
                    close_request(conn, request_id, "promoted", at)
            return load_request(conn, request_id), event

    @reachable
    def promotion_requests(self, name: str | None = None, *, pending_only: bool = True) -> list[PromotionRequest]:
        with self.engine.connect() as conn:
            return requests(conn, name, pending_only=pending_only)
