"""The embedded monitor: an append-only JSONL event log of observations, drift and promotions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import pandas as pd

    from loopml.records import DriftReport, LoopEvent, PromotionEvent


class LogMonitorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path | None = None  # default: <home>/monitoring/events.jsonl


class LogMonitor:
    """Writes one JSON line per event; ``events()`` reads them back."""

    name = "drift-log"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _write(self, kind: str, body: dict[str, Any]) -> None:
        line = json.dumps({"ts": time.time(), "event": kind, **body}, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line)

    def observe(self, model: str, version: int, inputs: pd.DataFrame, outputs: Sequence[float],
                latency_ms: Sequence[float]) -> None:
        scores = [float(s) for s in outputs]
        self._write("observe", {"model": model, "version": version, "rows": len(scores),
                                "mean_score": sum(scores) / max(len(scores), 1),
                                "max_latency_ms": max(latency_ms, default=0.0)})

    def on_drift(self, report: DriftReport) -> None:
        self._write("drift", {"model": report.model, "reason": report.reason,
                              "features": [asdict(f) for f in report.features if f.drifted]})

    def on_promotion(self, event: PromotionEvent) -> None:
        self._write("promotion", asdict(event))

    def on_event(self, event: LoopEvent) -> None:
        """Every loop event (validated, canary, performance, ...) as ``{"event": "event", "kind": ...}``."""
        body = asdict(event)
        body["event_ts"] = body.pop("ts")
        self._write("event", body)

    def events(self) -> list[dict[str, Any]]:
        """Every complete event; a torn or corrupt line (a writer killed mid-line) is skipped."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out
