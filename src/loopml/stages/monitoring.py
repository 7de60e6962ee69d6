"""Stage 8a: the window of live predictions a monitor reads, and the monitors that observe it.

A window is read from the serving backend's prediction log: on local disk behind a cursor file, or,
when replicas share state through the store (``log_to_store``), from uploaded segments claimed
through a compare-and-set cursor in the store, so two monitors never read a segment twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loopml import prediction_records
from loopml.capabilities import LogFlushingServing
from loopml.context import shares_state
from loopml.predlog import LogCursor, SegmentCursor, read_since, read_store_segments, segment_day, store_segments
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
    """Rows the configured serving backend logged since ``since`` (unix seconds).

    With ``since=None`` the window is everything logged after the previous such call: a cursor of
    byte offsets per log segment is kept in ``<home>/monitoring/<model>.log-cursor.json``, so a
    scheduled monitor reads only new rows. A torn last line is left for the next read.
    """
    flushing = ws.ability(ws.serving, LogFlushingServing)
    if flushing is not None:  # an in-process server writes its log from a background thread
        flushing.flush_log()
    root = Path(ws.serving.prediction_log_dir)
    cursor_file = ws.context.home / "monitoring" / f"{model_name}.log-cursor.json"
    if shares_state(ws):
        records = _records_from_store(ws, model_name, since)
    elif since is None:
        cursor = LogCursor.from_json(cursor_file.read_text()) if cursor_file.is_file() else LogCursor()
        records, moved = read_since(root, model_name, cursor)
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cursor_file.with_suffix(".tmp")
        tmp.write_text(moved.to_json())
        tmp.replace(cursor_file)
    else:
        records, _ = read_since(root, model_name, since=since)
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


LOG_HORIZON_DAYS = 7  # uploaded segments older than this are neither read nor remembered by the cursor


def _records_from_store(ws: Workspace, model_name: str, since: float | None) -> list[dict[str, Any]]:
    """Records of uploaded log segments. Without ``since``: the segments no monitor has read yet,
    claimed through a shared cursor in the store (compare-and-set), so two monitors on two machines
    never read the same segment twice and neither misses one."""
    if since is not None:
        return read_store_segments(ws.store, store_segments(ws.store, model_name), since=since)
    horizon = (datetime.now(UTC) - timedelta(days=LOG_HORIZON_DAYS)).strftime("%Y-%m-%d")
    state = SharedState(ws.store, f"monitoring/{model_name}/log-cursor")
    for _ in range(20):
        current = state.read()
        cursor = SegmentCursor.from_value(current.value)
        cursor.forget_before(horizon)
        new = [k for k in store_segments(ws.store, model_name) if k not in cursor and segment_day(k) >= horizon]
        if not new:
            return []
        for key in new:
            cursor.add(key)
        try:
            state.write(current.version, cursor.to_value())
        except StateConflictError:  # another monitor claimed segments first: look again
            continue
        return read_store_segments(ws.store, new)
    raise StateConflictError(f"could not claim prediction log segments of {model_name}: the cursor kept moving")


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
