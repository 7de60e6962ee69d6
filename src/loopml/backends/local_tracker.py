"""The embedded tracker: one folder per run, readable without any server.

``<root>/<run_id>/run.json`` (identity, status, times), ``params.json``, ``tags.json``,
``metrics.jsonl`` (one line per point, appended) and ``artifacts/``. Small JSON files are replaced
atomically; metric lines are appended with O_APPEND, so concurrent writers never tear a line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.errors import RunNotFoundError, StorageError
from loopml.keys import validate_key
from loopml.records import MetricPoint, RunInfo, RunRecord


class LocalTrackerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    root: Path | None = None  # default: <home>/runs


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class LocalTracker:
    """Tracks runs as plain files; queryable from Python (get_run, list_runs) and the CLI."""

    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, run_id: str, *, must_exist: bool = True) -> Path:
        validate_key(run_id)
        path = self.root / run_id
        if must_exist and not (path / "run.json").is_file():
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}; see `loopml runs list`")
        return path

    def start_run(self, run: RunInfo) -> None:
        path = self._dir(run.run_id, must_exist=False)
        path.mkdir(parents=True, exist_ok=True)
        if (path / "run.json").is_file():  # idempotent: a retried start changes nothing
            return
        _write_json(path / "tags.json", dict(run.tags))
        _write_json(path / "run.json", {
            "run_id": run.run_id, "experiment": run.experiment, "name": run.name,
            "status": "RUNNING", "started_at": datetime.now(UTC).isoformat(), "ended_at": None,
        })

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        path = self._dir(run_id) / "params.json"
        current = _read_json(path, {})
        for key, value in params.items():
            text = str(value)
            if key in current and current[key] != text:
                raise StorageError(
                    f"run {run_id}: param {key!r} is already {current[key]!r}; params are immutable "
                    f"(got {text!r}). Log it as a metric or tag instead"
                )
            current[key] = text
        _write_json(path, current)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = time.time()
        lines = "".join(json.dumps({"key": k, "value": float(v), "step": int(step), "ts": now}) + "\n"
                        for k, v in metrics.items())
        fd = os.open(self._dir(run_id) / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        path = self._dir(run_id) / "tags.json"
        current = _read_json(path, {})
        current.update({str(k): str(v) for k, v in tags.items()})
        _write_json(path, current)

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None:
        target_name = validate_key(name or Path(path).name)
        dest = self._dir(run_id) / "artifacts" / target_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        path = self._dir(run_id) / "run.json"
        meta = _read_json(path, {})
        if meta.get("status") != "RUNNING":  # idempotent: the first end wins
            return
        meta.update(status=status, ended_at=datetime.now(UTC).isoformat())
        _write_json(path, meta)

    # ---------------------------------------------------------------- queries
    def get_run(self, run_id: str) -> RunRecord:
        path = self._dir(run_id)
        meta = _read_json(path / "run.json", {})
        series: dict[str, dict[int, MetricPoint]] = {}
        metrics_file = path / "metrics.jsonl"
        if metrics_file.is_file():
            for line in metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # blank, or torn by a writer killed mid-line
                    continue
                # One point per step: a retried log_metrics (same step) replaces, never doubles.
                series.setdefault(row["key"], {})[int(row["step"])] = MetricPoint(row["value"], row["step"], row["ts"])
        art_dir = path / "artifacts"
        artifacts = tuple(sorted(p.relative_to(art_dir).as_posix() for p in art_dir.rglob("*")
                                 if p.is_file() and not p.name.startswith("."))) if art_dir.is_dir() else ()
        return RunRecord(
            run_id=meta["run_id"], experiment=meta["experiment"], name=meta["name"],
            status=meta["status"], started_at=datetime.fromisoformat(meta["started_at"]),
            ended_at=datetime.fromisoformat(meta["ended_at"]) if meta.get("ended_at") else None,
            params=_read_json(path / "params.json", {}),
            metrics={k: tuple(v[step] for step in sorted(v)) for k, v in series.items()},
            tags=_read_json(path / "tags.json", {}), artifacts=artifacts,
        )

    def list_runs(self, experiment: str | None = None) -> list[RunRecord]:
        runs = [self.get_run(p.name) for p in self.root.iterdir() if (p / "run.json").is_file()]
        if experiment is not None:
            runs = [r for r in runs if r.experiment == experiment]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    def artifact_path(self, run_id: str, name: str) -> Path:
        return self._dir(run_id) / "artifacts" / validate_key(name)
