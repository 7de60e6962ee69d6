"""MLflow tracker for loopml: one MLflow run per loopml run, via ``mlflow.MlflowClient``.

Params, per-step metrics, tags (dataset versions, git commit, registry version) and artifacts
(reports, model card) go to the tracking server named by ``tracking_uri``; the default is a SQLite
file under the project's home, so nothing needs to run. The loopml run id is stored as the tag
``loopml.run_id``: a retried ``start_run`` finds the run it created instead of making another.
Credentials for a remote server (``token`` or ``username``/``password``) are secrets in config;
MLflow reads them from its ``MLFLOW_TRACKING_*`` environment variables, so the tracker sets those in
its process when it is built. They are never logged or written to a run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.plugins import hookimpl
from loopml.records import MetricPoint, RunInfo, RunRecord
from loopml.specs import BackendSpec

RUN_ID_TAG = "loopml.run_id"


class MlflowOptions(BaseModel):
    """``[trackers.mlflow]`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tracking_uri: str | None = None  # default: sqlite:///<home>/mlflow.db
    artifact_location: str | None = None  # default: <home>/mlflow-artifacts (new experiments only)
    experiment_prefix: str = ""
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None


class MlflowTracker:
    """A loopml Tracker over ``mlflow.MlflowClient`` (no global mlflow state is touched)."""

    name = "mlflow"

    def __init__(self, options: MlflowOptions, tracking_uri: str, artifact_root: str | None) -> None:
        from mlflow import MlflowClient

        self.options = options
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._set_credentials()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._runs: dict[str, str] = {}  # loopml run id -> mlflow run id
        self._steps: dict[str, set[tuple[str, int]]] = {}  # mlflow run id -> (metric, step) logged

    def _set_credentials(self) -> None:
        if self.options.token is not None:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self.options.token.get_secret_value()
        if self.options.username is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = self.options.username
        if self.options.password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = self.options.password.get_secret_value()

    def _experiment_id(self, name: str) -> str:
        full = self.options.experiment_prefix + name
        found = self.client.get_experiment_by_name(full)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_root:
            location = f"{self.artifact_root.rstrip('/')}/{full}"
        try:
            return self.client.create_experiment(full, artifact_location=location)
        except Exception:  # created concurrently by another process
            found = self.client.get_experiment_by_name(full)
            if found is None:
                raise
            return found.experiment_id

    def _mlflow_run(self, run_id: str) -> str:
        if run_id in self._runs:
            return self._runs[run_id]
        found = self.client.search_runs(experiment_ids=[e.experiment_id for e in self.client.search_experiments()],
                                        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
        if not found:
            raise KeyError(f"MLflow has no run tagged {RUN_ID_TAG}={run_id}")
        self._runs[run_id] = found[0].info.run_id
        return self._runs[run_id]

    def start_run(self, run: RunInfo) -> None:
        try:
            self._mlflow_run(run.run_id)
            return  # a retried start: the run exists
        except KeyError:
            pass
        created = self.client.create_run(self._experiment_id(run.experiment), run_name=run.name,
                                         tags={RUN_ID_TAG: run.run_id, **dict(run.tags)})
        self._runs[run.run_id] = created.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        mlflow_run = self._mlflow_run(run_id)
        current = self.client.get_run(mlflow_run).data.params
        new = [Param(k, str(v)) for k, v in params.items() if current.get(k) != str(v)]
        if new:
            self.client.log_batch(mlflow_run, params=new)

    def _logged_steps(self, mlflow_run: str) -> set[tuple[str, int]]:
        """(metric, step) pairs the run already has: read from MLflow once per run and process
        (a retry may come from a new worker process), then kept up to date here."""
        if mlflow_run not in self._steps:
            keys = self.client.get_run(mlflow_run).data.metrics
            self._steps[mlflow_run] = {(key, m.step) for key in keys
                                       for m in self.client.get_metric_history(mlflow_run, key)}
        return self._steps[mlflow_run]

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """MLflow appends every logged point, so a retried call would store a step twice: points of
        a (metric, step) the run already has are skipped."""
        from mlflow.entities import Metric

        mlflow_run = self._mlflow_run(run_id)
        logged = self._logged_steps(mlflow_run)
        new = {k: v for k, v in metrics.items() if (k, int(step)) not in logged}
        if not new:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(mlflow_run, metrics=[Metric(k, float(v), now, int(step)) for k, v in new.items()])
        logged.update((k, int(step)) for k in new)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._mlflow_run(run_id), tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None:
        path = Path(path)
        if name and name != path.name:
            with tempfile.TemporaryDirectory() as tmp:
                renamed = Path(tmp) / name
                shutil.copyfile(path, renamed)
                self.client.log_artifact(self._mlflow_run(run_id), str(renamed))
        else:
            self.client.log_artifact(self._mlflow_run(run_id), str(path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        mlflow_run = self._mlflow_run(run_id)
        if self.client.get_run(mlflow_run).info.status == "RUNNING":
            self.client.set_terminated(mlflow_run, status=status)

    # Queryable: loopml can read MLflow runs back (used by `loopml runs` and the conformance suite).
    def get_run(self, run_id: str) -> RunRecord:
        from datetime import UTC, datetime

        mlflow_run = self.client.get_run(self._mlflow_run(run_id))
        info, data = mlflow_run.info, mlflow_run.data
        metrics = {key: tuple(MetricPoint(m.value, m.step, m.timestamp / 1000)
                              for m in sorted(self.client.get_metric_history(info.run_id, key),
                                              key=lambda m: (m.step, m.timestamp)))
                   for key in data.metrics}
        artifacts = tuple(sorted(a.path for a in self.client.list_artifacts(info.run_id)))
        experiment = self.client.get_experiment(info.experiment_id).name
        return RunRecord(
            run_id=run_id, experiment=experiment[len(self.options.experiment_prefix):], name=info.run_name,
            status=info.status, started_at=datetime.fromtimestamp(info.start_time / 1000, UTC),
            ended_at=datetime.fromtimestamp(info.end_time / 1000, UTC) if info.end_time else None,
            params=dict(data.params), metrics=metrics,
            tags={k: v for k, v in data.tags.items() if not k.startswith("mlflow.")}, artifacts=artifacts)

    def list_runs(self, experiment: str | None = None) -> list[RunRecord]:
        experiments = self.client.search_experiments()
        if experiment is not None:
            experiments = [e for e in experiments if e.name == self.options.experiment_prefix + experiment]
        runs = self.client.search_runs([e.experiment_id for e in experiments],
                                       filter_string=f"tags.`{RUN_ID_TAG}` != ''") if experiments else []
        return [self.get_run(r.data.tags[RUN_ID_TAG]) for r in runs]


def _factory(options: MlflowOptions, ctx: Any) -> MlflowTracker:
    uri = options.tracking_uri
    if uri is None:
        ctx.home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{ctx.home / 'mlflow.db'}"
    root = options.artifact_location or (ctx.home / "mlflow-artifacts").resolve().as_uri()
    return MlflowTracker(options, uri, root)


@hookimpl
def loopml_trackers() -> list[BackendSpec]:
    return [BackendSpec("mlflow", _factory, MlflowOptions, "MLflow tracking (SQLite by default, any server)",
                        requires=("mlflow",))]
