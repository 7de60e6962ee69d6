"""Fan-out to every configured tracker; one tracker failing never fails training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loopml.capabilities import ModelLoggingTracker
from loopml.protocols import Tracker
from loopml.records import RunInfo

log = logging.getLogger(__name__)


class TrackingSession:
    """Sends each call to every tracker; a tracker that raises is reported and then skipped."""

    def __init__(self, trackers: Sequence[Tracker], run: RunInfo) -> None:
        self.run = run
        self.trackers = list(trackers)
        self.failures: dict[str, str] = {}
        self._logs_models = {id(t) for t in self.trackers if isinstance(t, ModelLoggingTracker)}  # once
        self._call("start_run", run)

    def _call(self, verb: str, *args: Any, fallback: str | None = None, **kwargs: Any) -> None:
        for tracker in self.trackers:
            name = tracker.name
            if name in self.failures:
                continue
            try:
                able = fallback is None or id(tracker) in self._logs_models
                getattr(tracker, verb if able else fallback)(*args, **kwargs)  # type: ignore[arg-type]
            except Exception as exc:
                self.failures[name] = f"{verb}: {type(exc).__name__}: {exc}"
                log.warning("tracker %r failed in %s (%s); training continues without it",
                            name, verb, exc)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", self.run.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_metrics", self.run.run_id, metrics, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("set_tags", self.run.run_id, tags)

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        self._call("log_artifact", self.run.run_id, path, name)

    def log_model(self, path: Path, name: str | None = None) -> None:
        """The trained model: a tracker with the optional ``log_model`` verb logs it as a model
        (MLflow: a logged model with a pyfunc flavour; W&B: a ``model`` artifact), others as a file."""
        self._call("log_model", self.run.run_id, path, name, fallback="log_artifact")

    def end(self, status: str = "FINISHED") -> None:
        self._call("end_run", self.run.run_id, status)
