"""Optional abilities a backend may have beyond its kind's verbs, declared as Protocols.

A backend's abilities are found once, when the workspace builds it (:meth:`Workspace.ability`),
and listed by ``loopml config``; call sites ask the workspace, never the backend with ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from loopml.protocols import (
    ArtifactStore,
    FeatureStore,
    ModelRegistry,
    QueryableTracker,
    ServingBackend,
    Tracker,
    Trainer,
)

if TYPE_CHECKING:
    from loopml.records import GcResult, PromotionEvent, PromotionRequest


# ---------------------------------------------------------------------------- artifact stores
@runtime_checkable
class ExportingStore(ArtifactStore, Protocol):
    """Writes plain files beside the content-addressed ones (readable exports of models)."""

    def export(self, path: str, data: bytes) -> str: ...


@runtime_checkable
class CollectableStore(ArtifactStore, Protocol):
    """Removes blobs no key refers to, safely beside running writers (``loopml store gc``)."""

    def gc(self, grace_seconds: float | None = None) -> GcResult:
        """``grace_seconds``: how long a blob no key names must have been left alone by writers on
        other machines before it goes (stores that lock out writers while they sweep ignore it)."""


@runtime_checkable
class LinkingStore(ArtifactStore, Protocol):
    """Gives a URL another machine can open (presigned), for report links in Prefect's UI."""

    def url(self, key: str, expires_seconds: int = ...) -> str: ...


# ---------------------------------------------------------------------------- trackers
@runtime_checkable
class ModelLoggingTracker(Tracker, Protocol):
    """Logs the trained model as a model (MLflow logged model, W&B model artifact), not a file."""

    def log_model(self, run_id: str, path: Path, name: str | None = None) -> None: ...


@runtime_checkable
class FlushingTracker(Tracker, Protocol):
    """Buffers or keeps a run open after ``end_run``; ``flush`` sends or finishes it."""

    def flush(self, run_id: str | None = None) -> None: ...


@runtime_checkable
class LinkingTracker(Tracker, Protocol):
    """Names a URL where a person opens the run (MLflow over HTTP, W&B online)."""

    def run_url(self, run_id: str) -> str | None: ...


# ---------------------------------------------------------------------------- serving
@runtime_checkable
class ShadowServing(ServingBackend, Protocol):
    """Mirrors every request to a shadow version whose answers are logged, never returned."""

    def set_shadow(self, version: int | None) -> None: ...


@runtime_checkable
class EntityServing(ServingBackend, Protocol):
    """Answers rows that carry only the entity id, with features from the online store."""

    def use_online_features(self, lookup: Callable[[list[Any]], Any]) -> None: ...


@runtime_checkable
class LogFlushingServing(ServingBackend, Protocol):
    """Writes its prediction log asynchronously; ``flush_log`` waits until it is on disk."""

    def flush_log(self) -> None: ...


@runtime_checkable
class StoreLoggingServing(ServingBackend, Protocol):
    """Uploads closed prediction-log segments to the artifact store it is given (``log_to_store``)."""

    log_sink: Any


@runtime_checkable
class InProcessServing(ServingBackend, Protocol):
    """Serves from the process that deploys to it (the built-in server): it stops when that process
    exits, so a command-line run about to exit has nobody to serve there."""

    def serves_in_process(self) -> bool: ...


@runtime_checkable
class TokenServing(ServingBackend, Protocol):
    """Requires a token of its own on inference calls (TorchServe's token authorization)."""

    @property
    def inference_token(self) -> str | None: ...


# ---------------------------------------------------------------------------- feature stores
@runtime_checkable
class RowFeatureStore(FeatureStore, Protocol):
    """Looks online features up as plain rows from this machine's disk (no network round trip),
    cheaply enough for a server to do on its event loop for every request."""

    def online_rows(self, view_name: str, entity_ids: Sequence[Any]) -> list[dict[str, Any]]: ...


# ---------------------------------------------------------------------------- registries
@runtime_checkable
class MigratingRegistry(ModelRegistry, Protocol):
    """Has a schema that a new loopml may need upgraded, explicitly (``loopml registry upgrade``)."""

    def schema_status(self) -> tuple[str | None, str]:
        """(the database's revision, the revision this loopml needs)."""

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to this loopml's revision; (revision before, after)."""


@runtime_checkable
class GovernedRegistry(ModelRegistry, Protocol):
    """Enforces an approval policy with separation of duties inside its own transactions."""

    def policy(self) -> dict[str, int]:
        """Approvals needed per alias."""

    def apply_policy(self, wanted: Mapping[str, int], *, actor: str) -> dict[str, tuple[int, int]]:
        """Set approvals per alias (0 removes the rule); returns {alias: (before, after)} of changes."""

    def request_promotion(self, name: str, version: int, alias: str, *, expected: int | None, actor: str,
                          reason: str, clear_canary: bool = False) -> PromotionRequest: ...

    def decide(self, request_id: int, decision: str, *, actor: str,
               reason: str) -> tuple[PromotionRequest, PromotionEvent | None]: ...

    def promotion_requests(self, name: str | None = None, *,
                           pending_only: bool = True) -> list[PromotionRequest]: ...


# ---------------------------------------------------------------------------- trainers
@runtime_checkable
class DescribedTrainer(Trainer, Protocol):
    """Describes its own parameters for the tracker (else only its name is recorded)."""

    def params(self) -> Mapping[str, Any]: ...


OPTIONAL: dict[str, tuple[type, ...]] = {
    "artifact_store": (ExportingStore, CollectableStore, LinkingStore),
    "tracker": (QueryableTracker, ModelLoggingTracker, FlushingTracker, LinkingTracker),
    "serving": (ShadowServing, EntityServing, LogFlushingServing, StoreLoggingServing, TokenServing,
                InProcessServing),
    "trainer": (DescribedTrainer,),
    "registry": (MigratingRegistry, GovernedRegistry),
    "feature_store": (RowFeatureStore,),
}
"""The optional abilities looked for in each kind of backend."""


def abilities_of(kind: str, backend: object) -> frozenset[type]:
    """The optional abilities ``backend`` has (checked once, when it is built)."""
    return frozenset(ability for ability in OPTIONAL.get(kind, ()) if isinstance(backend, ability))
