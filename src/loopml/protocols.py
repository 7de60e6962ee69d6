"""The verbs of each backend kind. Plugins implement these; the core only calls these."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd

    from loopml.features import FeatureView
    from loopml.records import (
        DriftReport,
        HistoryEntry,
        LoopEvent,
        ModelStatus,
        ModelVersion,
        ObjectInfo,
        PromotionEvent,
        Rollout,
        RunInfo,
        RunRecord,
    )
    from loopml.trainers import TrainedModel, TrainRequest


@runtime_checkable
class ArtifactStore(Protocol):
    """Immutable objects under validated keys, verified by sha256 on read.

    Writes are create-only: putting different bytes under an existing key raises
    ``ObjectExistsError``; putting the same bytes again is a no-op returning the same info.
    """

    uri: str

    def put(
        self, key: str, data: bytes | BinaryIO | Path, *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo: ...
    def get(self, key: str) -> bytes: ...
    def download(self, key: str, dest: Path) -> ObjectInfo: ...
    def info(self, key: str) -> ObjectInfo: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...


@runtime_checkable
class Tracker(Protocol):
    """Receives a run's params, metrics, tags and artifacts. Many trackers run at once.

    loopml owns the run id, so one run is logged under the same id to every tracker. Every verb
    must be idempotent for the same arguments (retries after transient errors are safe).

    Two optional verbs, used when present: ``log_model(run_id, path, name=None)`` logs the trained
    artifact as the vendor's model object (else ``log_artifact``), and ``flush(run_id)`` is called
    after registration has logged the card and report (a tracker that must finish runs to make them
    final, like W&B, finishes them there; one that buffers sends the buffer).
    """

    name: str

    def start_run(self, run: RunInfo) -> None: ...
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None: ...
    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...


@runtime_checkable
class QueryableTracker(Tracker, Protocol):
    """A tracker that can read runs back (the local tracker; MLflow)."""

    def get_run(self, run_id: str) -> RunRecord: ...
    def list_runs(self, experiment: str | None = None) -> list[RunRecord]: ...


@runtime_checkable
class ModelRegistry(Protocol):
    """Model versions with lineage, aliases moved by compare-and-set, append-only history."""

    def register(
        self,
        name: str,
        *,
        artifact_key: str,
        artifact_sha256: str,
        status: ModelStatus = "candidate",
        actor: str,
        reason: str = "",
        **lineage: Any,
    ) -> ModelVersion: ...
    def get(self, name: str, version: int | None = None, *, alias: str | None = None) -> ModelVersion: ...
    def list_versions(self, name: str | None = None) -> list[ModelVersion]: ...
    def aliases(self, name: str) -> dict[str, int]: ...
    def set_status(self, name: str, version: int, status: ModelStatus, *, actor: str, reason: str) -> ModelVersion: ...
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected: int | None,
        actor: str,
        reason: str,
        evidence_sha256: str | None = None,
        action: Literal["promote", "rollback"] = "promote",
        clear: Mapping[str, int] | None = None,
        rollout: Rollout | None = None,
    ) -> PromotionEvent: ...
    def clear_alias(self, name: str, alias: str, *, expected: int, actor: str, reason: str) -> PromotionEvent: ...
    def rollback(self, name: str, alias: str, *, actor: str, reason: str,
                 expected: int | None = None) -> PromotionEvent: ...
    def history(self, name: str) -> list[HistoryEntry]: ...
    def rollout(self, name: str, alias: str = "canary") -> Rollout | None: ...


@runtime_checkable
class FeatureStore(Protocol):
    """One set of feature definitions for training (point-in-time) and serving (online)."""

    def apply(self, view: FeatureView, source: pd.DataFrame) -> None: ...
    def historical_features(
        self, view_name: str, entities: pd.DataFrame, timestamp_column: str, features: Sequence[str] | None = None
    ) -> pd.DataFrame: ...
    def materialize(self, view_name: str, end: datetime) -> int: ...
    def online_features(self, view_name: str, entity_ids: Sequence[Any]) -> pd.DataFrame: ...


@runtime_checkable
class ServingBackend(Protocol):
    """Serves registered model versions over HTTP with traffic split and zero-downtime swap.

    Every answered row is appended to ``prediction_log_dir/<model>.jsonl`` as
    ``{"ts", "version", "inputs", "output", "latency_ms"}``; the monitor flow reads it.
    """

    name: str
    prediction_log_dir: Path

    def deploy(self, model: ModelVersion, artifact_path: Path) -> str: ...
    def set_traffic(self, weights: Mapping[int, float]) -> None: ...
    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def undeploy(self, version: int | None = None) -> None: ...
    def smoke_test(self, artifact: bytes, rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]: ...


@runtime_checkable
class Monitor(Protocol):
    """Observes live predictions and reacts to drift and promotions. Many monitors run at once."""

    name: str

    def observe(
        self, model: str, version: int, inputs: pd.DataFrame, outputs: Sequence[float],
        latency_ms: Sequence[float],
    ) -> None: ...
    def on_drift(self, report: DriftReport) -> None: ...
    def on_promotion(self, event: PromotionEvent) -> None: ...


@runtime_checkable
class EventMonitor(Monitor, Protocol):
    """A monitor that also hears every lifecycle event (optional verb ``on_event``)."""

    def on_event(self, event: LoopEvent) -> None: ...


@runtime_checkable
class Trainer(Protocol):
    """Turns training rows into an exported artifact (see :mod:`loopml.trainers`).

    ``fingerprint()`` names everything besides the data that determines the model (options, code);
    loopml caches a trained model by it and the dataset versions. ``fit`` must be deterministic
    for a given ``request.seed``, call ``request.on_epoch`` after each epoch, and return an artifact
    made by :func:`loopml.artifacts.export_artifact`.
    """

    name: str

    def fingerprint(self) -> str: ...
    def fit(self, request: TrainRequest) -> TrainedModel: ...


PROTOCOL_OF_KIND: dict[str, type] = {
    "artifact_store": ArtifactStore,
    "tracker": Tracker,
    "registry": ModelRegistry,
    "feature_store": FeatureStore,
    "serving": ServingBackend,
    "monitor": Monitor,
    "trainer": Trainer,
}
"""The Protocol a backend of each kind must satisfy (gate checks are plain callables)."""


def members(protocol: type) -> list[str]:
    """The attributes and methods a Protocol declares (its own and its Protocol bases')."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= {n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")}
    return sorted(names)
