"""Conformance suites: the behaviour every backend of a kind must show.

Subclass one and provide its fixture (``store``, ``tracker``, ``registry`` …); each test names
the promise it checks. Optional capabilities are methods a subclass may override; the tests that
need them skip otherwise.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from loopml.errors import (
    IntegrityError,
    ModelNotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    RegistryError,
    StaleAliasError,
    UnsafeKeyError,
)
from loopml.records import RunInfo

TRAVERSAL_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a/./b",
                  "%2e%2e/escape", "a/%2E%2E/b", "a\\..\\b", "", "a/", "C:/x", ".hidden"]


class ArtifactStoreSuite:
    """Store contract: create-only immutable objects, verified reads, safe keys."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - subclasses provide it
        raise NotImplementedError("provide a `store` fixture returning a fresh, empty store")

    def corrupt(self, store: Any, key: str) -> None:
        """Overwrite the stored bytes of ``key`` behind the store's back (optional)."""
        pytest.skip("this store's suite does not implement corrupt()")

    def test_put_then_get_returns_the_same_bytes_and_sha256(self, store: Any) -> None:
        data = b"loopml" * 1000
        info = store.put("models/m1/model.pt", data, metadata={"kind": "model"})
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.size == len(data)
        assert store.get("models/m1/model.pt") == data
        assert store.info("models/m1/model.pt").metadata["kind"] == "model"

    def test_put_accepts_file_objects_and_paths(self, store: Any, tmp_path: Path) -> None:
        src = tmp_path / "payload.bin"
        src.write_bytes(b"x" * 3_000_000)
        assert store.put("big/from-path", src).size == 3_000_000
        assert store.put("big/from-file", io.BytesIO(b"abc")).size == 3
        out = store.download("big/from-path", tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        assert out.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()

    def test_same_content_under_same_key_is_idempotent(self, store: Any) -> None:
        first = store.put("a/b", b"same")
        again = store.put("a/b", b"same")
        assert again.sha256 == first.sha256

    def test_different_content_under_existing_key_is_refused(self, store: Any) -> None:
        store.put("a/b", b"one")
        with pytest.raises(ObjectExistsError, match="a/b"):
            store.put("a/b", b"two")
        assert store.get("a/b") == b"one"

    def test_exists_list_and_delete(self, store: Any) -> None:
        for key in ("p/1", "p/2", "q/1"):
            store.put(key, key.encode())
        assert store.exists("p/1") and not store.exists("p/3")
        assert [i.key for i in store.list("p/")] == ["p/1", "p/2"]
        store.delete("p/1")
        assert not store.exists("p/1")
        assert [i.key for i in store.list("p/")] == ["p/2"]

    def test_missing_key_raises_not_found(self, store: Any) -> None:
        with pytest.raises(ObjectNotFoundError, match="nope"):
            store.get("nope")
        with pytest.raises(ObjectNotFoundError):
            store.delete("nope")

    @pytest.mark.parametrize("key", TRAVERSAL_KEYS)
    def test_keys_that_could_escape_the_root_are_rejected(self, store: Any, key: str) -> None:
        with pytest.raises(UnsafeKeyError):
            store.put(key, b"x")
        with pytest.raises(UnsafeKeyError):
            store.get(key)

    def test_corrupted_object_raises_integrity_error(self, store: Any) -> None:
        store.put("c/obj", b"original bytes")
        self.corrupt(store, "c/obj")
        with pytest.raises(IntegrityError, match="c/obj"):
            store.get("c/obj")

    def test_concurrent_writers_of_one_key_agree(self, store: Any) -> None:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                store.put("race/key", b"identical payload")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get("race/key") == b"identical payload"


class TrackerSuite:
    """Tracker contract: everything logged can be read back; every verb is retry-safe."""

    @pytest.fixture
    def tracker(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `tracker` fixture")

    def read_back(self, tracker: Any, run_id: str) -> dict[str, Any]:
        """Return {"params", "metrics" (name -> list of (step, value)), "tags", "status",
        "artifacts"} read through the vendor's own client. Default: the QueryableTracker API."""
        run = tracker.get_run(run_id)
        return {"params": dict(run.params),
                "metrics": {k: [(p.step, p.value) for p in v] for k, v in run.metrics.items()},
                "tags": dict(run.tags), "status": run.status, "artifacts": list(run.artifacts)}

    def _run(self) -> RunInfo:
        return RunInfo(run_id=uuid.uuid4().hex, experiment="conformance", name="suite-run",
                       tags={"loopml.dataset_version": "d@abc"})

    def test_a_full_run_reads_back(self, tracker: Any, tmp_path: Path) -> None:
        run = self._run()
        tracker.start_run(run)
        tracker.log_params(run.run_id, {"lr": 0.01, "epochs": 3})
        for step in range(3):
            tracker.log_metrics(run.run_id, {"loss": 1.0 / (step + 1)}, step=step)
        tracker.set_tags(run.run_id, {"loopml.git_commit": "deadbeef"})
        report = tmp_path / "report.html"
        report.write_text("<h1>ok</h1>")
        tracker.log_artifact(run.run_id, report)
        tracker.end_run(run.run_id, "FINISHED")
        got = self.read_back(tracker, run.run_id)
        assert got["params"]["lr"] == "0.01" and got["params"]["epochs"] == "3"
        assert [v for _, v in sorted(got["metrics"]["loss"])] == pytest.approx([1.0, 0.5, 1 / 3])
        assert got["tags"]["loopml.git_commit"] == "deadbeef"
        assert got["tags"]["loopml.dataset_version"] == "d@abc"
        assert got["status"] == "FINISHED"
        assert "report.html" in got["artifacts"]

    def test_retried_calls_are_harmless(self, tracker: Any) -> None:
        run = self._run()
        tracker.start_run(run)
        tracker.start_run(run)
        tracker.log_params(run.run_id, {"lr": 0.1})
        tracker.log_params(run.run_id, {"lr": 0.1})
        tracker.end_run(run.run_id, "FINISHED")
        tracker.end_run(run.run_id, "FINISHED")
        got = self.read_back(tracker, run.run_id)
        assert got["params"]["lr"] == "0.1"
        assert got["status"] == "FINISHED"

    def test_failed_run_is_marked_failed(self, tracker: Any) -> None:
        run = self._run()
        tracker.start_run(run)
        tracker.end_run(run.run_id, "FAILED")
        assert self.read_back(tracker, run.run_id)["status"] == "FAILED"


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

    def test_stale_compare_and_set_is_refused_and_changes_nothing(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        with pytest.raises(StaleAliasError) as info:
            registry.set_alias("churn", "production", 3, expected=1, actor="b", reason="stale")
        assert info.value.actual == 2
        assert registry.get("churn", alias="production").version == 2

    def test_rollback_returns_to_the_previous_version(self, registry: Any) -> None:
        for _ in range(2):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        event = registry.rollback("churn", "production", actor="oncall", reason="bad latency")
        assert (event.from_version, event.to_version, event.action) == (2, 1, "rollback")
        assert registry.get("churn", alias="production").version == 1

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
