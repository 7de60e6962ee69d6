"""MLflow tracker for loopml: one MLflow run per loopml run, via ``mlflow.MlflowClient``.

Params, per-step metrics, tags (dataset versions, git commit, registry version) and artifacts
(reports, model card) go to the tracking server named by ``tracking_uri``; the default is a SQLite
file under the project's home, so nothing needs to run. The loopml run id is stored as the tag
``loopml.run_id``: a retried ``start_run`` finds the run it created instead of making another.

What MLflow's own tools expect is there too:

* the trained model is an MLflow **logged model** with a ``pyfunc`` flavour whose loader reads the
  loopml artifact (no pickle; :mod:`loopml_mlflow.pyfunc`), so ``mlflow.pyfunc.load_model`` and
  ``mlflow models serve`` work on ``models:/<id>``, ``runs:/<run>/model`` and ``models:/churn@production``;
* every loopml registry version is mirrored into MLflow's model registry (tag ``loopml.version``)
  and aliases follow every promotion and rollback. loopml's registry stays the source of truth:
  mirroring runs after loopml's compare-and-set committed, and a failed mirror never blocks it;
* dataset versions are run inputs (``log_inputs``), gate results and holdout metrics are run metrics,
  and MLflow's standard ``mlflow.source.*`` and ``mlflow.user`` tags are set;
* metrics are sent in batches (flushed by size, by age, and before any other call).
Credentials for a remote server (``token`` or ``username``/``password``) are secrets in config;
they reach MLflow's client through its request-header extension point (:mod:`loopml_mlflow.auth`),
never through the process environment that child processes inherit, and are never logged or
written to a run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.context import BackendContext
from loopml.plugins import hookimpl
from loopml.records import MetricPoint, RunInfo, RunRecord
from loopml.specs import BackendSpec
from loopml_mlflow.tags import dataset_tags, standard_tags

RUN_ID_TAG = "loopml.run_id"
MODEL_ID_TAG = "loopml.mlflow_model_id"
VERSION_TAG = "loopml.version"
BATCH_POINTS = 500  # MLflow's log_batch takes at most 1000 metrics
BATCH_SECONDS = 2.0


class MlflowOptions(BaseModel):
    """``[trackers.mlflow]`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tracking_uri: str | None = None  # default: sqlite:///<home>/mlflow.db
    artifact_location: str | None = None  # default: the server's (proxied); <home>/mlflow-artifacts for a file store
    experiment_prefix: str = ""
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    mirror_registry: bool = True  # loopml registry versions and aliases -> MLflow's model registry


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
        self._pending: dict[str, list[Any]] = {}  # mlflow run id -> Metric objects not yet sent
        self._flushed_at = time.monotonic()

    def _set_credentials(self) -> None:
        from loopml_mlflow.auth import use_credentials

        secret = {"token": self.options.token, "password": self.options.password}
        use_credentials(self.tracking_uri, username=self.options.username,
                        **{k: v.get_secret_value() for k, v in secret.items() if v is not None})

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

    def _mlflow_run(self, run_id: str, experiment_id: str | None = None) -> str:
        """The MLflow run of a loopml run: remembered, else searched (in its experiment when known,
        e.g. a retried start; across experiments only when a new process continues a run)."""
        if run_id in self._runs:
            return self._runs[run_id]
        experiments = [experiment_id] if experiment_id else [e.experiment_id for e in self.client.search_experiments()]
        found = self.client.search_runs(experiment_ids=experiments,
                                        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
        if not found:
            raise KeyError(f"MLflow has no run tagged {RUN_ID_TAG}={run_id}")
        self._runs[run_id] = found[0].info.run_id
        return self._runs[run_id]

    def start_run(self, run: RunInfo) -> None:
        experiment_id = self._experiment_id(run.experiment)
        try:
            self._mlflow_run(run.run_id, experiment_id)
            return  # a retried start: the run exists
        except KeyError:
            pass
        created = self.client.create_run(experiment_id, run_name=run.name,
                                         tags={RUN_ID_TAG: run.run_id, **standard_tags(run), **dict(run.tags)})
        self._runs[run.run_id] = created.info.run_id
        self._log_dataset_inputs(created.info.run_id, run)

    def _log_dataset_inputs(self, mlflow_run: str, run: RunInfo) -> None:
        """Each ``loopml.dataset.<role>`` tag (``labels@9f3c…``) as an MLflow dataset input."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for tag, ref in sorted(run.tags.items()):
            if tag.startswith("loopml.dataset.") and "@" in ref:
                name, digest = ref.split("@", 1)
                inputs.append(DatasetInput(Dataset(name=name, digest=digest[:36], source_type="loopml",
                                                   source=json.dumps({"dataset": ref})),
                                           tags=[InputTag("mlflow.data.context", tag.removeprefix("loopml.dataset."))]))
        if inputs:
            self.client.log_inputs(mlflow_run, datasets=inputs)

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
        now = int(time.time() * 1000)
        pending = self._pending.setdefault(mlflow_run, [])
        pending.extend(Metric(k, float(v), now, int(step)) for k, v in new.items())
        logged.update((k, int(step)) for k in new)
        if len(pending) >= BATCH_POINTS or time.monotonic() - self._flushed_at >= BATCH_SECONDS:
            self.flush(run_id)

    def flush(self, run_id: str | None = None) -> None:
        """Send buffered metric points (of one run, or of all)."""
        runs = [self._mlflow_run(run_id)] if run_id else list(self._pending)
        for mlflow_run in runs:
            pending = self._pending.pop(mlflow_run, [])
            for i in range(0, len(pending), 1000):
                self.client.log_batch(mlflow_run, metrics=pending[i:i + 1000])
        self._flushed_at = time.monotonic()

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.flush(run_id)
        self.client.log_batch(self._mlflow_run(run_id), tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_model(self, run_id: str, path: Path, name: str | None = None) -> None:
        """The trained artifact as an MLflow logged model (pyfunc flavour, no pickle), also under
        the run's ``model/`` folder; the raw archive stays a run artifact too. Retry-safe."""
        from mlflow.entities import LoggedModelOutput

        from loopml_mlflow.pyfunc import write_model_folder

        self.log_artifact(run_id, path, name)
        mlflow_run = self._mlflow_run(run_id)
        self.flush(run_id)
        run = self.client.get_run(mlflow_run)
        if run.data.tags.get(MODEL_ID_TAG):
            return  # a retried call: the model is logged
        model = self.client.create_logged_model(run.info.experiment_id, name="model", source_run_id=mlflow_run,
                                                tags={RUN_ID_TAG: run_id}, model_type="loopml")
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_model_folder(Path(tmp) / "model", Path(path).read_bytes(), run_id=mlflow_run,
                                        model_id=model.model_id, artifact_path=model.artifact_location)
            self.client.log_model_artifacts(model.model_id, str(folder))
            self.client.log_artifacts(mlflow_run, str(folder), artifact_path="model")
        self.client.log_outputs(mlflow_run, [LoggedModelOutput(model.model_id, step=0)])
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.set_tag(mlflow_run, MODEL_ID_TAG, model.model_id)

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None:
        path = Path(path)
        if name and name != path.name:
            with tempfile.TemporaryDirectory() as tmp:
                renamed = Path(tmp) / name
                shutil.copyfile(path, renamed)
                self.client.log_artifact(self._mlflow_run(run_id), str(renamed))
        else:
            self.client.log_artifact(self._mlflow_run(run_id), str(path))

    def run_url(self, run_id: str) -> str | None:
        """The run's page in the MLflow UI (for links from Prefect); None for a local store."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        mlflow_run = self._mlflow_run(run_id)
        experiment = self.client.get_run(mlflow_run).info.experiment_id
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{mlflow_run}"

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.flush(run_id)
        mlflow_run = self._mlflow_run(run_id)
        if self.client.get_run(mlflow_run).info.status == "RUNNING":
            self.client.set_terminated(mlflow_run, status=status)

    # Queryable: loopml can read MLflow runs back (used by `loopml runs` and the conformance suite).
    def get_run(self, run_id: str) -> RunRecord:
        self.flush(run_id)
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


class RegistryMirror:
    """Mirrors loopml's registry into MLflow's: one MLflow model version per loopml version (tag
    ``loopml.version``), aliases moved after loopml moved them. Idempotent, so a retried hook or a
    re-run mirrors nothing twice."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker
        self.client = tracker.client

    def _name(self, model: str) -> str:
        return self.tracker.options.experiment_prefix + model

    def _registered(self, name: str, project: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name, tags={"loopml.project": project},
                    description="Mirrored by loopml; loopml's registry is the source of truth "
                                "(`loopml models history`).")
            except MlflowException:  # created concurrently
                self.client.get_registered_model(name)

    def find(self, model: str, version: int) -> Any | None:
        found = self.client.search_model_versions(
            f"name = '{self._name(model)}' and tags.`{VERSION_TAG}` = '{version}'")
        return found[0] if found else None

    def mirror_version(self, model: Any, project: str) -> Any:
        name = self._name(model.name)
        self._registered(name, project)
        existing = self.find(model.name, model.version)
        if existing is not None:
            self.client.set_model_version_tag(name, existing.version, "loopml.status", model.status)
            return existing
        mlflow_run = self.tracker._mlflow_run(model.run_id)
        model_id = self.client.get_run(mlflow_run).data.tags.get(MODEL_ID_TAG)
        source = f"models:/{model_id}" if model_id else f"runs:/{mlflow_run}/model"
        return self.client.create_model_version(
            name, source, run_id=mlflow_run, model_id=model_id,
            tags={VERSION_TAG: str(model.version), "loopml.status": model.status,
                  "loopml.artifact_sha256": model.artifact_sha256, **dataset_tags(model)},
            description=f"loopml {model.ref}: {model.status}")

    def move_alias(self, event: Any) -> None:
        if event.to_version is None:  # loopml cleared the alias (a rejected canary, a rollback's canary)
            with contextlib.suppress(Exception):  # already absent in MLflow: nothing to clear
                self.client.delete_registered_model_alias(self._name(event.name), event.alias)
            return
        target = self.find(event.name, event.to_version)
        if target is None:
            raise LookupError(f"MLflow has no version of {self._name(event.name)} tagged "
                              f"{VERSION_TAG}={event.to_version}; it was registered before mirroring was on")
        self.client.set_registered_model_alias(self._name(event.name), event.alias, target.version)


_mirrors: dict[tuple[str, str], RegistryMirror] = {}  # (options, home) -> mirror: one client per project


def _mirror_for(context: Any) -> RegistryMirror | None:
    """The mirror of the project a hook fires for, if it tracks to MLflow with mirroring on."""
    if context is None or "mlflow" not in context.config.trackers:
        return None
    options = MlflowOptions.model_validate(context.config.trackers["mlflow"] or {})
    if not options.mirror_registry:
        return None
    key = (options.model_dump_json(), str(context.home))
    if key not in _mirrors:  # build the tracker (an MlflowClient) once, not on every hook call

        _mirrors[key] = RegistryMirror(_factory(options, BackendContext(context.project, context.root,
                                                                         context.home)))
    return _mirrors[key]


@hookimpl
def loopml_after_model_registered(model: Any, context: Any) -> None:
    mirror = _mirror_for(context)
    if mirror is not None:
        mirror.mirror_version(model, context.project)


@hookimpl
def loopml_after_promotion(event: Any, context: Any) -> None:
    mirror = _mirror_for(context)
    if mirror is not None:
        mirror.move_alias(event)


def _factory(options: MlflowOptions, ctx: Any) -> MlflowTracker:
    uri = options.tracking_uri
    if uri is None:
        ctx.home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{ctx.home / 'mlflow.db'}"
    root = options.artifact_location
    if root is None and not uri.startswith(("http://", "https://")):
        root = (ctx.home / "mlflow-artifacts").resolve().as_uri()  # beside the SQLite file, not ./mlruns
    # A tracking server decides where artifacts go (its --artifacts-destination, proxied over HTTP as
    # mlflow-artifacts:/): a path on the trainer's disk would reach no other machine.
    return MlflowTracker(options, uri, root)


@hookimpl
def loopml_trackers() -> list[BackendSpec]:
    return [BackendSpec("mlflow", _factory, MlflowOptions, "MLflow tracking (SQLite by default, any server)",
                        requires=("mlflow",))]
