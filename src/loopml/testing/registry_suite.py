"""Conformance suite for registries: versions, compare-and-set aliases, history, races."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from loopml.errors import (
    ModelNotFoundError,
    RegistryError,
    StaleAliasError,
)
from loopml.records import Rollout


class RegistrySuite:
    """Registry contract: numbered versions with lineage, compare-and-set aliases, history."""

    @pytest.fixture
    def registry(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `registry` fixture")

    SHA = "a" * 64

    def _register(self, registry: Any, name: str = "churn", **kw: Any) -> Any:
        return registry.register(name, artifact_key=f"models/{name}/{uuid.uuid4().hex}",
                                 artifact_sha256=self.SHA, actor="suite", **kw)

    def test_versions_are_numbered_from_one_and_keep_lineage(self, registry: Any) -> None:
        v1 = self._register(registry, dataset_version="ds@123", git_commit="abc", params={"lr": 0.1},
                            metrics={"auc": 0.9}, environment={"python": "3.11"})
        v2 = self._register(registry)
        assert (v1.version, v2.version) == (1, 2)
        got = registry.get("churn", 1)
        assert got.dataset_version == "ds@123" and got.git_commit == "abc"
        assert got.params == {"lr": 0.1} and got.metrics == {"auc": 0.9}
        assert registry.get("churn").version == 2  # latest

    def test_first_promotion_expects_no_alias(self, registry: Any) -> None:
        self._register(registry)
        event = registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="first")
        assert (event.from_version, event.to_version) == (None, 1)
        assert registry.get("churn", alias="production").version == 1

    @pytest.mark.parametrize("alias", ["", " production", "Production", "prod/1", "a" * 64, "prod\n"])
    def test_an_invalid_alias_is_refused_naming_it(self, registry: Any, alias: str) -> None:
        self._register(registry)
        with pytest.raises(RegistryError, match="alias"):
            registry.set_alias("churn", alias, 1, expected=None, actor="a", reason="r")
        assert registry.aliases("churn") == {}

    def test_stale_compare_and_set_is_refused_and_changes_nothing(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        with pytest.raises(StaleAliasError) as info:
            registry.set_alias("churn", "production", 3, expected=1, actor="b", reason="stale")
        assert info.value.actual == 2
        assert registry.get("churn", alias="production").version == 2

    def test_a_passed_canary_moves_production_and_clears_the_canary_in_one_step(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "canary", 2, expected=None, actor="a", reason="canary")
        with pytest.raises(StaleAliasError):  # the canary moved meanwhile: neither alias changes
            registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r", clear={"canary": 3})
        assert registry.aliases("churn") == {"canary": 2, "production": 1}
        event = registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="passed",
                                   clear={"canary": 2})
        assert registry.aliases("churn") == {"production": 2}  # no alias that no traffic follows
        assert [(c.alias, c.from_version, c.to_version, c.action) for c in event.cleared] == [
            ("canary", 2, None, "clear")]
        assert [h.action for h in registry.history("churn")][-2:] == ["promote", "clear"]

    def test_a_rejected_canary_is_cleared_and_a_production_rollback_clears_the_canary(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "canary", 2, expected=None, actor="a", reason="canary")
        with pytest.raises(StaleAliasError):
            registry.clear_alias("churn", "canary", expected=3, actor="judge", reason="rejected")
        cleared = registry.clear_alias("churn", "canary", expected=2, actor="judge", reason="rejected")
        assert (cleared.alias, cleared.from_version, cleared.to_version) == ("canary", 2, None)
        assert registry.aliases("churn") == {"production": 1}
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        registry.set_alias("churn", "canary", 3, expected=None, actor="a", reason="canary of v3")
        back = registry.rollback("churn", "production", expected=2, actor="oncall", reason="bad")
        assert registry.aliases("churn") == {"production": 1}  # v3 was judged against v2: it goes too
        assert [(c.alias, c.from_version) for c in back.cleared] == [("canary", 3)]

    def test_the_rollout_travels_with_the_canary_alias(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        assert registry.rollout("churn") is None  # no canary: nothing to follow
        registry.set_alias("churn", "canary", 2, expected=None, actor="a", reason="shadow",
                           rollout=Rollout("shadow", 0.1))
        assert registry.rollout("churn") == Rollout("shadow", 0.1)  # every replica reads this
        registry.set_alias("churn", "canary", 3, expected=2, actor="a", reason="canary",
                           rollout=Rollout("canary", 0.25))
        assert registry.rollout("churn") == Rollout("canary", 0.25)  # replaced with the alias
        assert registry.rollout("churn", "production") is None
        registry.clear_alias("churn", "canary", expected=3, actor="judge", reason="rejected")
        assert registry.rollout("churn") is None  # gone with the alias

    def test_rollback_returns_to_the_previous_version(self, registry: Any) -> None:
        for _ in range(2):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        event = registry.rollback("churn", "production", actor="oncall", reason="bad latency")
        assert (event.from_version, event.to_version, event.action) == (2, 1, "rollback")
        assert registry.get("churn", alias="production").version == 1
        with pytest.raises(RegistryError, match="no earlier version"):  # no toggling back to v2
            registry.rollback("churn", "production", actor="oncall", reason="again")
        assert registry.get("churn", alias="production").version == 1

    def test_rollback_of_a_version_no_longer_current_is_refused(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        for version, expected in ((1, None), (2, 1), (3, 2)):
            registry.set_alias("churn", "production", version, expected=expected, actor="a", reason="r")
        registry.rollback("churn", "production", expected=3, actor="alice", reason="v3 is slow")
        # Bob saw v3 too; his rollback must not take production back a second step, to v1.
        with pytest.raises(StaleAliasError) as info:
            registry.rollback("churn", "production", expected=3, actor="bob", reason="v3 is slow")
        assert info.value.actual == 2
        assert registry.get("churn", alias="production").version == 2
        assert [e.action for e in registry.history("churn")].count("rollback") == 1

    def test_history_is_append_only_and_ordered(self, registry: Any) -> None:
        self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="alice", reason="why")
        entries = registry.history("churn")
        assert [e.action for e in entries] == ["register", "promote"]
        assert entries[-1].actor == "alice" and entries[-1].reason == "why"

    def test_rejected_versions_cannot_be_promoted(self, registry: Any) -> None:
        self._register(registry, status="rejected")
        with pytest.raises(RegistryError, match="rejected"):
            registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")

    def test_unknown_versions_and_aliases_raise_not_found(self, registry: Any) -> None:
        with pytest.raises(ModelNotFoundError):
            registry.get("nothing-here")
        self._register(registry)
        with pytest.raises(ModelNotFoundError):
            registry.get("churn", 99)
        with pytest.raises(ModelNotFoundError):
            registry.get("churn", alias="production")

    def test_concurrent_promotions_from_one_state_have_one_winner(self, registry: Any) -> None:
        for _ in range(6):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        outcomes: list[str] = []

        def promote(version: int) -> None:
            try:
                registry.set_alias("churn", "production", version, expected=1, actor="t", reason="r")
                outcomes.append("won")
            except StaleAliasError:
                outcomes.append("stale")

        threads = [threading.Thread(target=promote, args=(v,)) for v in range(2, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["stale"] * 4 + ["won"]


# ------------------------------------------------------------------------------------ features
