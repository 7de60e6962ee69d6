"""Stage 8a: the window of live predictions a monitor reads, and the monitors that observe it.

A window is read from the serving backend's prediction log: on local disk behind a cursor file, or,
when replicas share state through the store (``log_to_store``), from uploaded segments claimed
through a compare-and-set cursor in the store, so two monitors never read a segment twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loopml import prediction_records
from loopml.capabilities import LogFlushingServing
from loopml.context import shares_state
from loopml.predlog import LogCursor, read_since, read_store_segments, store_segments
from loopml.segment_cursor import LOG_HORIZON_DAYS, SegmentCursor, segment_day
from loopml.shared_state import SharedState, StateConflictError
from loopml.stages.project import safely

if TYPE_CHECKING:
    from loopml.context import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionWindow:
    """What the serving backend answered since some time: inputs, scores, latencies, versions."""
    inputs: pd.DataFrame
    outputs: tuple[Any, ...]  # score or value; the predicted class for multiclass
    latency_ms: tuple[float, ...]
    versions: tuple[int, ...]
    records: tuple[dict[str, Any], ...] = ()  # the raw log records (entity, request id, time)

    @property
    def span(self) -> tuple[datetime | None, datetime | None]:
        """When the first and the last answered row of the window were logged (UTC)."""
        times = [float(r["ts"]) for r in self.records if isinstance(r.get("ts"), int | float)]
        if not times:
            return None, None
        return (datetime.fromtimestamp(min(times), UTC), datetime.fromtimestamp(max(times), UTC))


def prediction_window(ws: Workspace, model_name: str, since: float | None = None) -> PredictionWindow:
    """Rows the configured serving backend logged since ``since`` (unix seconds); with ``since=None``
    the rows no monitor has read yet, marked read at once (:func:`claimed_window` marks them only
    once the caller's work succeeded: use it for a monitor run)."""
    with claimed_window(ws, model_name, since) as window:
        return window


@contextlib.contextmanager
def claimed_window(ws: Workspace, model_name: str, since: float | None = None) -> Iterator[PredictionWindow]:
    """The window of a monitor run, read exactly once across runs and machines.

    With ``since=None`` the window is everything logged after what earlier runs consumed. The rows
    are consumed only when the ``with`` block ends without an error: a failed read, drift check,
    report or event leaves them for the next run. On local disk the cursor of byte offsets
    (``<home>/monitoring/<model>.log-cursor.json``) is written at that point; with replicas sharing
    state through the store, the segments are first *claimed* in the shared cursor (a lease of
    ``CLAIM_SECONDS``, so two monitors never read the same segment) and committed as read, or
    released, by compare-and-set. A monitor killed mid-run leaves a claim that expires.
    """
    flushing = ws.ability(ws.serving, LogFlushingServing)
    if flushing is not None:  # an in-process server writes its log from a background thread
        flushing.flush_log()
    if since is not None:
        if shares_state(ws):
            records = read_store_segments(ws.store, store_segments(ws.store, model_name), since=since)
        else:
            records, _ = read_since(Path(ws.serving.prediction_log_dir), model_name, since=since)
        yield _window(model_name, records)
    elif shares_state(ws):
        claim = StoreClaim(ws, model_name)
        try:
            yield _window(model_name, claim.take())
        except BaseException:
            claim.release()
            raise
        claim.commit()
    else:
        cursor_file = ws.context.home / "monitoring" / f"{model_name}.log-cursor.json"
        cursor = LogCursor.from_json(cursor_file.read_text()) if cursor_file.is_file() else LogCursor()
        records, moved = read_since(Path(ws.serving.prediction_log_dir), model_name, cursor)
        yield _window(model_name, records)
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cursor_file.with_suffix(".tmp")
        tmp.write_text(moved.to_json())
        tmp.replace(cursor_file)


def _window(model_name: str, records: list[dict[str, Any]]) -> PredictionWindow:
    # What clients were answered: not the shadow copies, not the rows a model failed on; and only
    # records with the fields a window needs (a foreign or hand-edited line is skipped, not fatal).
    answered = [r for r in records if not r.get("shadow") and "error" not in r]
    records = [r for r in answered if prediction_records.parse(r) is not None]
    if len(records) < len(answered):
        log.warning("skipped %d prediction log record(s) of %s without inputs, output or version",
                    len(answered) - len(records), model_name)
    return PredictionWindow(pd.DataFrame([r["inputs"] for r in records]),
                            tuple(r["output"] if isinstance(r["output"], str) else float(r["output"])
                                  for r in records),
                            tuple(float(r.get("latency_ms", 0.0)) for r in records),
                            tuple(int(r["version"]) for r in records), tuple(records))


CLAIM_SECONDS = 900.0  # a monitor run that holds segments longer than this loses them to the next run


def _horizon() -> str:
    """The oldest day of segments a monitor still reads (``YYYY-MM-DD``)."""
    return (datetime.now(UTC) - timedelta(days=LOG_HORIZON_DAYS)).strftime("%Y-%m-%d")


class StoreClaim:
    """Uploaded log segments one monitor run holds: claimed, then committed as read or released, each
    a compare-and-set on the shared cursor in the store (``state/monitoring/<model>/log-cursor``)."""

    def __init__(self, ws: Workspace, model_name: str) -> None:
        self.ws, self.model_name = ws, model_name
        self.state = SharedState(ws.store, f"monitoring/{model_name}/log-cursor")
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.keys: list[str] = []

    def _update(self, change: Callable[[SegmentCursor], bool]) -> None:
        """Apply ``change`` to the shared cursor by compare-and-set (``change`` returns False: write nothing)."""
        for _ in range(20):
            current = self.state.read()
            cursor = SegmentCursor.from_value(current.value)
            cursor.forget_before(_horizon())
            if not change(cursor):
                return
            try:
                self.state.write(current.version, cursor.to_value())
                return
            except StateConflictError:  # another monitor moved the cursor: look again
                continue
        raise StateConflictError(f"could not update the prediction log cursor of {self.model_name}: "
                                 "it kept moving")

    def take(self) -> list[dict[str, Any]]:
        """Claim the segments nobody has read or holds, and read them (released if reading fails)."""

        def claim(cursor: SegmentCursor) -> bool:
            now, horizon = time.time(), _horizon()
            self.keys = [k for k in store_segments(self.ws.store, self.model_name)
                         if segment_day(k) >= horizon and cursor.claimable(k, now)]
            cursor.claim(self.keys, self.owner, now + CLAIM_SECONDS)
            return bool(self.keys)

        self._update(claim)
        if not self.keys:
            return []
        try:
            return read_store_segments(self.ws.store, self.keys)
        except BaseException:
            self.release()
            raise

    def commit(self) -> None:
        def mark_read(cursor: SegmentCursor) -> bool:
            cursor.commit(self.keys, self.owner)
            return True

        if self.keys:
            self._update(mark_read)

    def release(self) -> None:
        def let_go(cursor: SegmentCursor) -> bool:
            cursor.release(self.keys, self.owner)
            return True

        if self.keys:
            try:
                self._update(let_go)
            except Exception as exc:  # the claim then expires after CLAIM_SECONDS
                log.warning("could not release %d claimed log segment(s) of %s (%s); they are read again "
                            "after %.0f s", len(self.keys), self.model_name, exc, CLAIM_SECONDS)
            self.keys = []


def observe(ws: Workspace, model_name: str, window: PredictionWindow) -> None:
    """Hand a window of live predictions to every monitor, one call per model version."""
    versions = np.asarray(window.versions)
    for version in sorted(set(window.versions)):
        rows = np.flatnonzero(versions == version)
        inputs = window.inputs.iloc[rows].reset_index(drop=True)
        outputs = [window.outputs[i] for i in rows]
        latency = [window.latency_ms[i] for i in rows]
        for monitor in ws.monitors:
            safely(monitor.observe, model_name, version, inputs, outputs, latency)
