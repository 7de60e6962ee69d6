"""The embedded backends pass the same conformance suites a plugin author uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopml.backends.local_features import LocalFeatureStore
from loopml.backends.local_store import LocalArtifactStore
from loopml.backends.local_tracker import LocalTracker
from loopml.backends.log_monitor import LogMonitor
from loopml.backends.sqlite_registry import SqliteRegistry
from loopml.serving.builtin import BuiltinServing, BuiltinServingOptions
from loopml.testing import (
    ApprovalsSuite,
    ArtifactStoreSuite,
    FeatureStoreSuite,
    MonitorSuite,
    RegistrySuite,
    ServingBackendSuite,
    TrackerSuite,
)


class TestLocalArtifactStore(ArtifactStoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalArtifactStore:
        return LocalArtifactStore(tmp_path / "store")

    def corrupt(self, store: LocalArtifactStore, key: str) -> None:
        blob = store._blob_path(store.info(key).sha256)
        blob.write_bytes(b"tampered" + blob.read_bytes()[8:])


class TestLocalTracker(TrackerSuite):
    @pytest.fixture
    def tracker(self, tmp_path: Path) -> LocalTracker:
        return LocalTracker(tmp_path / "runs")


class TestSqliteRegistry(RegistrySuite, ApprovalsSuite):
    @pytest.fixture
    def registry(self, tmp_path: Path) -> SqliteRegistry:
        return SqliteRegistry(tmp_path / "registry.db")


class TestLocalFeatureStore(FeatureStoreSuite):
    @pytest.fixture
    def feature_store(self, tmp_path: Path) -> LocalFeatureStore:
        return LocalFeatureStore(tmp_path / "features")


@pytest.mark.server
class TestBuiltinServing(ServingBackendSuite):
    @pytest.fixture
    def serving(self, tmp_path: Path):
        backend = BuiltinServing(BuiltinServingOptions(), tmp_path / "predictions")
        yield backend
        backend.undeploy()


class TestLogMonitor(MonitorSuite):
    @pytest.fixture
    def monitor(self, tmp_path: Path) -> LogMonitor:
        return LogMonitor(tmp_path / "events.jsonl")

    def recorded(self, monitor: LogMonitor) -> list[dict]:
        return monitor.events()
