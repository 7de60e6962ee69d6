"""A loopml tracker that appends every call to a JSONL file (an in-house plugin template)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.plugins import hookimpl
from loopml.records import MetricPoint, RunInfo, RunRecord
from loopml.specs import BackendSpec


class JsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path = Path("runs.jsonl")


class JsonlTracker:
    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, **event: Any) -> None:
        line = json.dumps({"ts": time.time(), **event}, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def start_run(self, run: RunInfo) -> None:
        self._append(verb="start_run", run_id=run.run_id, experiment=run.experiment, name=run.name,
                     tags=dict(run.tags))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._append(verb="log_params", run_id=run_id, params={k: str(v) for k, v in params.items()})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self._append(verb="log_metrics", run_id=run_id, metrics=dict(metrics), step=step)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._append(verb="set_tags", run_id=run_id, tags=dict(tags))

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None:
        self._append(verb="log_artifact", run_id=run_id, name=name or Path(path).name)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._append(verb="end_run", run_id=run_id, status=status)

    def get_run(self, run_id: str) -> RunRecord:
        """Replay the file: the last value of each param/tag, one point per metric and step (a
        retried call logs a step again), each artifact name once, the first end."""
        events = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        events = [e for e in events if e["run_id"] == run_id]
        start = next(e for e in events if e["verb"] == "start_run")
        params: dict[str, str] = {}
        tags: dict[str, str] = dict(start["tags"])
        metrics: dict[str, dict[int, MetricPoint]] = {}
        artifacts: dict[str, None] = {}
        status = "RUNNING"
        for e in events:
            if e["verb"] == "log_params":
                params.update(e["params"])
            elif e["verb"] == "set_tags":
                tags.update(e["tags"])
            elif e["verb"] == "log_metrics":
                for k, v in e["metrics"].items():
                    metrics.setdefault(k, {})[e["step"]] = MetricPoint(v, e["step"], e["ts"])
            elif e["verb"] == "log_artifact":
                artifacts[e["name"]] = None
            elif e["verb"] == "end_run" and status == "RUNNING":
                status = e["status"]
        from datetime import UTC, datetime

        return RunRecord(run_id, start["experiment"], start["name"], status,  # type: ignore[arg-type]
                         datetime.fromtimestamp(start["ts"], UTC), None, params,
                         {k: tuple(v[step] for step in sorted(v)) for k, v in metrics.items()}, tags,
                         tuple(artifacts))


def _factory(options: JsonlOptions, ctx: Any) -> JsonlTracker:
    return JsonlTracker(options.path if options.path.is_absolute() else ctx.root / options.path)


@hookimpl
def loopml_trackers() -> list[BackendSpec]:
    return [BackendSpec("jsonl", _factory, JsonlOptions, "every tracker call appended to a JSONL file")]


class JsonlSettings(BaseModel):
    """The plugin's own settings: ``[plugins.jsonl]`` in loopml.toml (unknown keys are errors).

    A backend's options (``[trackers.jsonl]``) configure the tracker it builds; settings configure
    the plugin's hooks, which get them as ``context.settings["jsonl"]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    freeze_reason: str | None = None  # set it to block every promotion with that reason


@hookimpl
def loopml_settings_model() -> type[BaseModel]:
    return JsonlSettings


@hookimpl
def loopml_before_promotion(model_name: str, candidate: str, report: Any, context: Any) -> str | None:
    settings = context.settings.get("jsonl") if context is not None else None
    return settings.freeze_reason if settings is not None else None
