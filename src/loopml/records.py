"""Typed, frozen records that cross module and plugin boundaries.

Plugins receive and return these; nothing mutable is shared between the core and a plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ModelStatus = Literal["candidate", "approved", "rejected", "archived"]
RunStatus = Literal["RUNNING", "FINISHED", "FAILED"]


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, content hash and size."""

    key: str
    sha256: str
    size: int
    created_at: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GcResult:
    """What an artifact store's gc() removed: unreferenced blobs, dead writers' temp files, bytes."""

    blobs: int
    temp_files: int
    bytes_freed: int


@dataclass(frozen=True)
class ColumnSchema:
    """A column of a dataset: name, logical type and whether nulls are allowed."""

    name: str
    type: str  # int | float | string | bool | timestamp | category
    nullable: bool = True


@dataclass(frozen=True)
class DatasetVersion:
    """An immutable, content-addressed dataset version.

    ``id`` is the sha256 of the canonical Parquet bytes; the same rows and schema give the same id.
    """

    name: str
    id: str
    row_count: int
    columns: tuple[ColumnSchema, ...]
    profile: Mapping[str, Mapping[str, Any]]
    source: Mapping[str, Any]
    created_at: datetime
    data_key: str

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def ref(self) -> str:
        """``name@shortid``: how humans, tags and lineage refer to this version."""
        return f"{self.name}@{self.short_id}"


@dataclass(frozen=True)
class RunInfo:
    """What every tracker is told when a run starts. loopml owns the run id."""

    run_id: str
    experiment: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricPoint:
    value: float
    step: int
    timestamp: float


@dataclass(frozen=True)
class RunRecord:
    """A run as read back from a tracker that supports queries."""

    run_id: str
    experiment: str
    name: str
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None
    params: Mapping[str, str]
    metrics: Mapping[str, tuple[MetricPoint, ...]]
    tags: Mapping[str, str]
    artifacts: tuple[str, ...]

    def latest_metrics(self) -> dict[str, float]:
        return {k: pts[-1].value for k, pts in self.metrics.items() if pts}


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version and its lineage."""

    name: str
    version: int
    status: ModelStatus
    artifact_key: str
    artifact_sha256: str
    created_at: datetime
    created_by: str
    dataset_version: str | None = None
    git_commit: str | None = None
    run_id: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"


@dataclass(frozen=True)
class HistoryEntry:
    """One append-only registry history row: who did what, when and why."""

    id: int
    name: str
    action: str  # register | promote | rollback | clear | status | request | approve | reject | policy
    alias: str | None
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    evidence_sha256: str | None
    at: datetime


@dataclass(frozen=True)
class Rollout:
    """How live traffic follows the ``canary`` alias, stored with it in the registry so that every
    replica routes alike: ``canary`` sends ``share`` of requests to it, ``shadow`` mirrors every
    request to it (answers still come from production)."""

    mode: Literal["canary", "shadow"]
    share: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in ("canary", "shadow"):
            raise ValueError(f"rollout mode {self.mode!r}: use 'canary' or 'shadow'")
        if not 0 < self.share < 1:
            raise ValueError(f"rollout share {self.share!r}: must be between 0 and 1 (exclusive)")

    def describe(self) -> str:
        return "a shadow copy of every request" if self.mode == "shadow" else f"{self.share:.0%} of traffic"


@dataclass(frozen=True)
class PromotionEvent:
    """An alias moved (promotion or rollback), or was cleared (``to_version`` None, action ``clear``).

    ``cleared`` lists the aliases the same transaction removed (a passed canary's ``canary``, the
    ``canary`` of a production that was rolled back), each as its own event."""

    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    action: Literal["promote", "rollback", "clear"]
    actor: str
    reason: str
    cleared: tuple[PromotionEvent, ...] = ()


@dataclass(frozen=True)
class ApprovalDecision:
    """One approval or rejection of a promotion request: who (on PostgreSQL the database role), when, why."""

    actor: str
    decision: Literal["approve", "reject"]
    reason: str
    at: datetime


@dataclass(frozen=True)
class PromotionRequest:
    """A request to move ``alias`` of ``name`` to ``version``, waiting for the approvals the
    registry's policy asks for. ``expected`` is where the alias pointed when it was requested: the
    move is a compare-and-set against it. ``state``: pending, promoted, rejected or stale."""

    id: int
    name: str
    version: int
    alias: str
    expected: int | None
    state: Literal["pending", "promoted", "rejected", "stale"]
    requested_by: str
    requested_at: datetime
    reason: str
    required: int  # approvals the policy asks for
    decisions: tuple[ApprovalDecision, ...] = ()

    @property
    def approvals(self) -> tuple[str, ...]:
        return tuple(d.actor for d in self.decisions if d.decision == "approve")


@dataclass(frozen=True)
class GateCheck:
    """One validation gate: measured value, threshold, verdict and a one-line reason."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateReport:
    """All gates of one candidate against the current production model."""

    model_name: str
    candidate: str
    baseline: str | None
    checks: tuple[GateCheck, ...]
    html_key: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)  # every task metric on the holdout
    importance: Mapping[str, float] = field(default_factory=dict)  # permutation importance, largest first

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: Literal["numeric", "categorical"]
    statistic: float
    p_value: float
    p_adjusted: float
    drifted: bool
    n_reference: int
    n_current: int
    missing_reference: float = 0.0  # share of missing values in each window
    missing_current: float = 0.0
    statistic_error: float = 0.0  # from sketches: the exact statistic is in [statistic, statistic + this]


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of a window of live inputs against the training reference."""

    model: str
    reference: str
    window_start: datetime | None
    window_end: datetime | None
    features: tuple[FeatureDrift, ...]
    drift_detected: bool
    reason: str
    html_key: str | None = None
    importance: Mapping[str, float] = field(default_factory=dict)  # the model's permutation importance

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.feature for f in self.features if f.drifted)


@dataclass(frozen=True)
class HookContext:
    """The project a lifecycle hook fires for, so a plugin needs no environment variables."""

    project: str
    profile: str | None
    root: Path
    home: Path
    config: Any = field(repr=False)  # the validated LoopmlConfig (secrets stay SecretStr)
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)  # plugin name -> its validated settings


@dataclass(frozen=True)
class HookFailure:
    """A lifecycle hook implementation that raised; recorded, never propagated."""

    plugin: str
    hook: str
    error: BaseException

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} failed in {self.hook}: {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True)
class LoopEvent:
    """Something happened to a model of a project: one record for every monitor, hook and Prefect.

    ``kind`` is a dotted name (see :mod:`loopml.events`); ``payload`` holds JSON-ready details
    (gate values, drifted features, the canary's numbers). ``version`` is the version it is about.
    """

    kind: str
    project: str
    model: str
    version: int | None
    reason: str
    actor: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    ts: float = 0.0

    @property
    def resource_id(self) -> str:
        """The Prefect resource: ``loopml.model.<project>.<model>`` (a dataset's facts:
        ``loopml.dataset.<project>.<dataset>``); triggers match on it."""
        if self.kind.startswith("loopml.dataset.") and self.payload.get("dataset"):
            return f"loopml.dataset.{self.project}.{self.payload['dataset']}"
        return f"loopml.model.{self.project}.{self.model}"


@dataclass(frozen=True)
class PipelineResult:
    """What one pass of the pipeline did."""

    model: str  # e.g. churn:v2
    status: str  # approved | rejected | candidate
    promoted: bool
    skipped_training: bool
    report_path: str | None
    failed_checks: tuple[str, ...]
    serving_url: str | None
    canary: str | None = None  # what the canary decided: "promote", "rollback", or "running"
    awaiting_approval: int | None = None  # the promotion request waiting for approval (approval policy)


@dataclass(frozen=True)
class TrainedRun:
    """What training produced: the tracked run, the stored artifact and the last epoch's metrics."""

    run: RunInfo
    artifact_key: str
    metrics: Mapping[str, float]
