"""Store maintenance shared by ``loopml store gc`` and the ``loopml-store-gc`` flow: retention of
prediction-log segments and reports by age, then garbage collection of the blobs nobody names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from loopml.capabilities import CollectableStore
from loopml.errors import ConfigError, LoopmlError
from loopml.segment_cursor import LOG_HORIZON_DAYS, segment_day

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GcResult


@dataclass(frozen=True)
class Expired:
    """Keys removed by retention: prediction-log segments and reports."""

    segments: int
    reports: int


def expire(ws: Workspace, *, predictions_days: int | None = None, reports_days: int | None = None,
           now: datetime | None = None) -> Expired:
    """Remove prediction-log segments logged more than ``predictions_days`` ago and reports made
    more than ``reports_days`` ago (None: keep them). Segments are kept at least as long as monitors
    may still read them (``LOG_HORIZON_DAYS``), so retention never takes a row no monitor has read.
    The blobs go at the next :func:`collect_garbage`."""
    now = now or datetime.now(UTC)
    if predictions_days is not None and predictions_days < LOG_HORIZON_DAYS:
        raise ConfigError(f"keep prediction logs at least {LOG_HORIZON_DAYS} days: monitors read segments up to "
                          f"that old (asked for {predictions_days})")
    segments = reports = 0
    if predictions_days is not None:
        cutoff = (now - timedelta(days=predictions_days)).strftime("%Y-%m-%d")
        for info in ws.store.list("predictions/"):
            day = segment_day(info.key)
            if day and day < cutoff:
                ws.store.delete(info.key)
                segments += 1
    if reports_days is not None:
        oldest = now - timedelta(days=reports_days)
        for info in ws.store.list("reports/"):
            if info.created_at < oldest:
                ws.store.delete(info.key)
                reports += 1
    return Expired(segments, reports)


def collect_garbage(ws: Workspace, grace_seconds: float | None = None) -> GcResult:
    """Remove blobs no key refers to (and temp files of killed writers), safe while writers run on
    this machine or, on S3, on others (blobs touched within ``grace_seconds`` stay)."""
    store = ws.ability(ws.store, CollectableStore)
    if store is None:
        raise LoopmlError(f"the artifact store {ws.store.uri} has no gc; expire its unreferenced "
                          "objects with the service's own lifecycle rules")
    return store.gc(grace_seconds)


@dataclass(frozen=True)
class Cleaned:
    """What one cleaning of the store did (``loopml store gc`` and the ``loopml-store-gc`` flow)."""

    expired: Expired
    gc: GcResult

    def to_dict(self) -> dict[str, int]:
        return {"expired_segments": self.expired.segments, "expired_reports": self.expired.reports,
                "blobs": self.gc.blobs, "temp_files": self.gc.temp_files, "bytes_freed": self.gc.bytes_freed}

    def describe(self, uri: str) -> str:
        return (f"{uri}: expired {self.expired.segments} log segments and {self.expired.reports} reports; removed "
                f"{self.gc.blobs} unreferenced blobs and {self.gc.temp_files} temp files, "
                f"{self.gc.bytes_freed / 1e6:.1f} MB freed")


def clean_store(ws: Workspace, *, predictions_days: int | None = None, reports_days: int | None = None,
                grace_seconds: float | None = None) -> Cleaned:
    """Retention first (:func:`expire`), then :func:`collect_garbage`, which frees the blobs it left."""
    expired = expire(ws, predictions_days=predictions_days, reports_days=reports_days)
    return Cleaned(expired, collect_garbage(ws, grace_seconds))

