"""Stage 8b: drift of live inputs (and the model's own outputs) against the training reference,
with the alert cooldown that keeps a drifting stream from retraining on every check."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from loopml import canonical, drift, events, sketches
from loopml.context import shares_state
from loopml.errors import LoopmlError, ObjectExistsError, ObjectNotFoundError
from loopml.reports import page, paragraph
from loopml.shared_state import SharedState, StateConflictError
from loopml.stages.project import pipeline_config, stamp, view_of
from loopml.stages.training import OUTPUT_COLUMN

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import DriftReport, ModelVersion


def drift_reference(ws: Workspace, model: ModelVersion) -> pd.DataFrame:
    """The inputs ``model`` was trained on, as stored next to its artifact. The frame's
    ``attrs["loopml_key"]`` is that store key (``check_drift`` caches the reference's sketch beside it)."""
    key = reference_key(model)
    frame = canonical.read_frame(ws.store.get(key))
    frame.attrs["loopml_key"] = key
    return frame


def reference_key(model: ModelVersion) -> str:
    """Where ``model``'s training inputs are stored (beside its artifact)."""
    return model.artifact_key.rsplit("/", 1)[0] + "/reference.parquet"


def reference_sketch(ws: Workspace, numeric: Sequence[str], categorical: Sequence[str], *,
                     key: str | None, frame: pd.DataFrame | None = None) -> Any:
    """The drift sketch of the reference stored at ``key``: built once per model version and feature
    set and kept beside it (``reference-sketch-<features>.npz``), so checks on any machine reuse it.
    The reference rows are read only when the sketch is not cached yet (from ``frame`` when the
    caller holds them already); without a ``key``, ``frame`` is sketched and nothing is kept."""
    if not key:
        assert frame is not None, "reference_sketch needs a key or a frame"
        return sketches.sketch_frame(frame, numeric=numeric, categorical=categorical)
    features = hashlib.sha256(json.dumps([list(numeric), list(categorical)]).encode()).hexdigest()[:12]
    cache = f"{key.rsplit('/', 1)[0]}/reference-sketch-{features}.npz"
    with contextlib.suppress(ObjectNotFoundError):
        return sketches.WindowSketch.from_bytes(ws.store.get(cache))
    if frame is None:
        frame = canonical.read_frame(ws.store.get(key))
    built = sketches.sketch_frame(frame, numeric=numeric, categorical=categorical)
    with contextlib.suppress(ObjectExistsError):  # another monitor cached it first: same counts
        ws.store.put(cache, built.to_bytes(), metadata={"content-type": "application/octet-stream"})
    return built


def check_drift(ws: Workspace, reference: pd.DataFrame, current: pd.DataFrame, reference_ref: str,
                production_version: int | None = None, now: float | None = None,
                outputs: Sequence[Any] | None = None,
                window: tuple[datetime | None, datetime | None] = (None, None)) -> tuple[DriftReport, str, bool]:
    """Compare live inputs (and, given ``outputs``, the model's answers) with the training reference.

    The output test compares what the model answered live with what it answered on its training
    inputs (score or value: KS; predicted class: chi-square), in the same Holm family as the inputs.
    Stores the HTML report.

    Returns (report, report key, alert). Confirmed drift alerts (hooks, monitors, and the flow's
    Prefect event) at most once per ``drift.cooldown_minutes`` for the same production version, so
    a drifting stream does not start a retrain on every check; a new production version resets it.
    """
    cfg = pipeline_config(ws)
    view = view_of(ws)
    numeric, categorical = list(view.numeric), list(view.categorical)
    if (outputs is not None and OUTPUT_COLUMN in reference.columns and len(outputs) == len(current)
            and OUTPUT_COLUMN not in view.features):
        current = current.assign(**{OUTPUT_COLUMN: list(outputs)})
        (categorical if cfg.task == "multiclass" else numeric).append(OUTPUT_COLUMN)
    if len(reference) + len(current) > drift.EXACT_UP_TO and len(current):  # large: on sketches

        ref_sketch = reference_sketch(ws, numeric, categorical, key=reference.attrs.get("loopml_key"),
                                      frame=reference)
        cur_sketch = sketches.sketch_frame(current, numeric=numeric, categorical=categorical, edges=ref_sketch.edges)
        report = drift.drift_from_sketches(ref_sketch, cur_sketch, alpha=cfg.drift.alpha,
                                           min_samples=cfg.drift.min_samples, model=cfg.model_name,
                                           reference_ref=reference_ref, window=window)
        report = drift.with_importance(report, _importance(ws, cfg.model_name, production_version))
        html = drift.render_html(report, ref_sketch, cur_sketch)
    else:
        report = drift.detect_drift(reference, current, numeric=numeric, categorical=categorical,
                                    alpha=cfg.drift.alpha, min_samples=cfg.drift.min_samples,
                                    model=cfg.model_name, reference_ref=reference_ref, window=window)
        report = drift.with_importance(report, _importance(ws, cfg.model_name, production_version))
        html = drift.render_html(report, reference, current) if len(current) else page(
            f"Drift of {cfg.model_name}", [paragraph("no data: no row was logged in this window")])
    key = f"reports/{cfg.model_name}/drift/drift-{stamp()}.html"
    ws.store.put(key, html.encode(), metadata={"content-type": "text/html"})
    payload = {"features": list(report.drifted_features), "production_version": production_version, "report": key,
               "rows": len(current), "drifted": report.drift_detected, "importance": dict(report.importance),
               "statistics": {f.feature: {"statistic": f.statistic, "p_adjusted": f.p_adjusted, "drifted": f.drifted}
                              for f in report.features}}
    events.announce(ws, events.make_event(ws, events.DRIFT_CHECKED, cfg.model_name, production_version,
                                          report.reason, payload))
    if not report.drift_detected:
        return report, key, False
    now = time.time() if now is None else now
    cooldown = cfg.drift.cooldown_minutes * 60
    alert_state = _AlertState(ws, cfg.model_name)
    last = alert_state.read()
    if last and last.get("production_version") == production_version and now - last["ts"] < cooldown:
        minutes = (cooldown - (now - last["ts"])) / 60
        report = dataclasses.replace(report, reason=f"{report.reason}; alert suppressed: cooldown for "
                                                    f"{minutes:.0f} more minutes")
        return report, key, False
    if not alert_state.claim({"ts": now, "production_version": production_version, "report": key}):
        report = dataclasses.replace(report, reason=f"{report.reason}; alert suppressed: another monitor "
                                                    "raised it at the same moment")
        return report, key, False
    report = dataclasses.replace(report, html_key=key)
    events.announce(ws, events.make_event(ws, events.DRIFT, cfg.model_name, production_version, report.reason,
                                          payload), subject=report)
    return report, key, True


def _importance(ws: Workspace, model: str, version: int | None) -> dict[str, float]:
    """The served version's permutation importance, as measured on its holdout at validation."""
    if version is None:
        return {}
    try:
        return dict(ws.registry.get(model, version).lineage.get("importance") or {})
    except LoopmlError:  # a version the registry no longer knows: the report goes out without it
        return {}


class _AlertState:
    """The last drift alert of a model: a file under ``<home>/monitoring``, or, when monitors share
    state (``log_to_store``), a compare-and-set state in the store, so of two monitors that see the
    same drift at once exactly one alerts."""

    def __init__(self, ws: Workspace, model_name: str) -> None:

        self.file = ws.context.home / "monitoring" / f"{model_name}.last-drift-alert.json"
        self.shared = SharedState(ws.store, f"monitoring/{model_name}/last-drift-alert") if shares_state(ws) else None
        self.version = 0

    def read(self) -> dict[str, Any] | None:
        if self.shared is not None:
            current = self.shared.read()
            self.version = current.version
            return current.value or None
        return json.loads(self.file.read_text()) if self.file.is_file() else None

    def claim(self, value: dict[str, Any]) -> bool:
        if self.shared is not None:

            try:
                self.shared.write(self.version, value)
            except StateConflictError:
                return False
            return True
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")  # replace atomically: a crash never leaves half a file
        tmp.write_text(json.dumps(value))
        tmp.replace(self.file)
        return True
