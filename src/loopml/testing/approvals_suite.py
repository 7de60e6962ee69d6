"""Conformance suite for registries that enforce approvals (:class:`loopml.capabilities.GovernedRegistry`).

A registry under test provides ``registry`` (an empty one) and ``person``: ``person(name)`` is the
registry as seen by that person. On SQLite it is the same registry (the identity is the actor each
call claims); on PostgreSQL it is a connection as the database role ``name``, which is the identity
whatever a call claims.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from loopml.errors import ApprovalRequiredError, RegistryError, SeparationOfDutiesError


class ApprovalsSuite:
    """Approval policy, request/approve/reject, separation of duties, stale requests, rollback."""

    @pytest.fixture
    def registry(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `registry` fixture")

    @pytest.fixture
    def person(self, registry: Any) -> Callable[[str], Any]:
        return lambda name: registry

    def _versions(self, registry: Any, count: int, by: str = "trainer") -> None:
        for _ in range(count):
            registry.register("churn", artifact_key=f"models/churn/{uuid.uuid4().hex}", artifact_sha256="a" * 64,
                              status="approved", actor=by)

    def test_a_governed_alias_moves_only_through_an_approval_by_someone_else(self, person: Any) -> None:
        trainer, alice, bob = person("trainer"), person("alice"), person("bob")
        self._versions(trainer, 3)
        trainer.set_alias("churn", "production", 1, expected=None, actor="trainer", reason="before the policy")
        trainer.apply_policy({"production": 1}, actor="trainer")
        with pytest.raises(ApprovalRequiredError, match="request-promotion"):
            trainer.set_alias("churn", "production", 2, expected=1, actor="trainer", reason="skip the policy")
        request = alice.request_promotion("churn", 2, "production", expected=1, actor="alice", reason="gates passed")
        assert (request.state, request.required, request.requested_by) == ("pending", 1, "alice")
        with pytest.raises(SeparationOfDutiesError, match="requested"):
            alice.decide(request.id, "approve", actor="alice", reason="mine")
        with pytest.raises(SeparationOfDutiesError, match="trained"):
            trainer.decide(request.id, "approve", actor="trainer", reason="mine too")
        assert trainer.aliases("churn") == {"production": 1}  # refused decisions changed nothing
        done, move = bob.decide(request.id, "approve", actor="bob", reason="read the report")
        assert done.state == "promoted" and done.approvals == ("bob",)
        assert (move.from_version, move.to_version, move.actor) == (1, 2, "bob")
        assert trainer.aliases("churn") == {"production": 2}
        actions = [(e.action, e.actor) for e in trainer.history("churn")][-3:]
        assert actions == [("request", "alice"), ("approve", "bob"), ("promote", "bob")]
        assert trainer.promotion_requests("churn") == []  # nothing pending
        back = trainer.rollback("churn", "production", expected=2, actor="oncall", reason="bad latency")
        assert back.to_version == 1  # back to a version the alias held: no approval needed
        with pytest.raises(ApprovalRequiredError):  # a "rollback" to a version never there is a promotion
            trainer.set_alias("churn", "production", 3, expected=1, actor="x", reason="r", action="rollback")

    def test_two_approvals_need_two_people_and_one_reject_ends_it(self, person: Any) -> None:
        trainer = person("trainer")
        self._versions(trainer, 2)
        trainer.apply_policy({"production": 2}, actor="trainer")
        first = person("alice").request_promotion("churn", 1, "production", expected=None, actor="alice", reason="r")
        after_one, move = person("bob").decide(first.id, "approve", actor="bob", reason="ok")
        assert after_one.state == "pending" and move is None and trainer.aliases("churn") == {}
        with pytest.raises(SeparationOfDutiesError, match="already decided"):
            person("bob").decide(first.id, "approve", actor="bob", reason="again")
        done, move = person("carol").decide(first.id, "approve", actor="carol", reason="ok")
        assert done.state == "promoted" and set(done.approvals) == {"bob", "carol"} and move.to_version == 1
        second = person("alice").request_promotion("churn", 2, "production", expected=1, actor="alice", reason="r")
        rejected, move = person("bob").decide(second.id, "reject", actor="bob", reason="fairness gap")
        assert rejected.state == "rejected" and move is None and trainer.aliases("churn") == {"production": 1}
        with pytest.raises(RegistryError, match="not pending"):
            person("carol").decide(second.id, "approve", actor="carol", reason="late")

    def test_a_request_whose_alias_moved_meanwhile_goes_stale(self, person: Any) -> None:
        trainer = person("trainer")
        self._versions(trainer, 3)
        trainer.set_alias("churn", "production", 1, expected=None, actor="trainer", reason="first")
        trainer.apply_policy({"production": 1}, actor="trainer")
        for_v2 = person("alice").request_promotion("churn", 2, "production", expected=1, actor="alice", reason="r")
        for_v3 = person("alice").request_promotion("churn", 3, "production", expected=1, actor="alice", reason="r")
        person("bob").decide(for_v3.id, "approve", actor="bob", reason="ok")
        stale, move = person("bob").decide(for_v2.id, "approve", actor="bob", reason="ok")
        assert stale.state == "stale" and move is None  # judged against v1, which is gone
        assert trainer.aliases("churn") == {"production": 3}

    def test_a_pending_request_is_asked_once_and_the_policy_change_is_history(self, person: Any) -> None:
        trainer = person("trainer")
        self._versions(trainer, 1)
        assert trainer.apply_policy({"production": 1}, actor="trainer") == {"production": (0, 1)}
        assert trainer.apply_policy({"production": 1}, actor="trainer") == {}  # unchanged: nothing recorded
        one = person("alice").request_promotion("churn", 1, "production", expected=None, actor="alice", reason="r")
        again = person("alice").request_promotion("churn", 1, "production", expected=None, actor="alice", reason="r")
        assert again.id == one.id and [r.id for r in trainer.promotion_requests("churn")] == [one.id]
        assert [(e.action, e.alias, e.to_version) for e in trainer.history("*")] == [("policy", "production", 1)]
        trainer.apply_policy({"production": 0}, actor="trainer")
        assert trainer.policy() == {}
        trainer.set_alias("churn", "production", 1, expected=None, actor="trainer", reason="no policy now")
