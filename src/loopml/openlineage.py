"""OpenLineage run events from every flow: Marquez, or any OpenLineage consumer, reads loopml's lineage.

With ``[openlineage]`` in ``loopml.toml``, each flow run (``loopml-ingest``, ``loopml-train``, …,
``loopml-pipeline``) sends a ``START`` event when it begins and ``COMPLETE`` or ``FAIL`` when it
ends, through openlineage-python's own transports (a file with one event per line, HTTP to an
OpenLineage API, or the log). The run id is the Prefect flow run's id; a stage flow inside the
pipeline names the pipeline's run as its parent (``parent`` run facet).

Datasets come from what the flow was given and what it did:

* inputs: the dataset versions and model versions among the flow's arguments;
* outputs: those in its return value, and the subjects of the loop events it announced (a dataset
  versioned, a model trained, registered or moved to an alias).

A dataset version is ``datasets/<name>`` with a ``version`` facet (its content address) and a
``schema`` facet (its columns); a model version is ``models/<name>`` with version ``v<n>``; an alias
is ``models/<name>@<alias>``; a trained artifact is its store key with its sha256 as version.
Sending is best effort: a consumer that is down is logged, never fails a flow.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import events
from loopml.config_loader import load_config
from loopml.errors import ConfigError
from loopml.records import DatasetVersion, ModelVersion, PromotionEvent, TrainedRun

if TYPE_CHECKING:
    from loopml.config import LoopmlConfig, OpenLineageConfig

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/loopml/loopml"
_CURRENT: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "loopml_openlineage_run", default=None)  # (namespace, job, run id) of the flow run we are in


@dataclass(frozen=True)
class LineageDataset:
    """A dataset as OpenLineage names it, with the facets loopml knows."""

    name: str
    version: str | None = None
    columns: tuple[tuple[str, str], ...] = ()


@dataclass
class LineageRun:
    """The outputs a running flow adds to (its return value, the events it announced)."""

    outputs: list[Any] = field(default_factory=list)

    def produced(self, value: Any) -> None:
        self.outputs.append(value)


def datasets_in(value: Any) -> list[LineageDataset]:
    """The datasets named by ``value``: records, and lists, tuples and dicts of them."""
    found: list[LineageDataset] = []
    if isinstance(value, DatasetVersion):
        found.append(LineageDataset(f"datasets/{value.name}", value.id,
                                    tuple((c.name, c.type) for c in value.columns)))
    elif isinstance(value, ModelVersion):
        found.append(LineageDataset(f"models/{value.name}", f"v{value.version}"))
    elif isinstance(value, PromotionEvent) and value.to_version is not None:
        found.append(LineageDataset(f"models/{value.name}@{value.alias}", f"v{value.to_version}"))
    elif isinstance(value, TrainedRun):
        found.append(LineageDataset(value.artifact_key))
    elif hasattr(value, "artifact_key") and hasattr(value, "artifact_sha256") and hasattr(value, "model_name"):
        found.append(LineageDataset(value.artifact_key, value.artifact_sha256))  # a trained candidate
    elif isinstance(value, Mapping):
        for item in value.values():
            found += datasets_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found += datasets_in(item)
    return found


def _inputs_of_registered(model: ModelVersion) -> list[LineageDataset]:
    """A registered version was trained on its recorded dataset versions (``name@shortid``)."""
    refs = (model.lineage.get("datasets") or {}).values()
    return [LineageDataset(f"datasets/{ref.split('@', 1)[0]}", ref.split("@", 1)[1] if "@" in ref else None)
            for ref in refs if isinstance(ref, str)]


def _unique(datasets: Iterable[LineageDataset]) -> list[LineageDataset]:
    seen: dict[str, LineageDataset] = {}
    for dataset in datasets:
        seen.setdefault(dataset.name, dataset)
    return list(seen.values())


class Emitter:
    """Builds OpenLineage run events with openlineage-python and sends them through its transport."""

    def __init__(self, options: OpenLineageConfig, config: LoopmlConfig) -> None:
        from openlineage.client import OpenLineageClient

        self.namespace = options.namespace or f"loopml/{config.project}"
        self.client = OpenLineageClient(config={"transport": self.transport(options, config)})

    @staticmethod
    def transport(options: OpenLineageConfig, config: LoopmlConfig) -> dict[str, Any]:
        if options.transport == "file":
            path = options.path or config.home_dir / "openlineage" / "events.jsonl"
            path = path if Path(path).is_absolute() else config.root / path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return {"type": "file", "log_file_path": str(path), "append": True}
        if options.transport == "console":
            return {"type": "console"}
        http: dict[str, Any] = {"type": "http", "url": options.url, "endpoint": options.endpoint,
                                "timeout": options.timeout}
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        if key:
            http["auth"] = {"type": "api_key", "apiKey": key}
        return http

    def send(self, state: str, job: str, run_id: str, *, inputs: Iterable[LineageDataset] = (),
             outputs: Iterable[LineageDataset] = (), parent: tuple[str, str, str] | None = None,
             error: BaseException | None = None) -> Any:
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import error_message_run, job_type_job, parent_run

        run_facets: dict[str, Any] = {}
        if parent is not None:
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent[2]), job=parent_run.Job(namespace=parent[0], name=parent[1]))
        if error is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=f"{type(error).__name__}: {error}"[:2000], programmingLanguage="PYTHON")
        job_facets = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="LOOPML",
                                                              jobType="FLOW")}
        event = RunEvent(
            eventType=getattr(RunState, state), eventTime=datetime.now(UTC).isoformat(), producer=PRODUCER,
            run=Run(runId=run_id, facets=run_facets), job=Job(namespace=self.namespace, name=job, facets=job_facets),
            inputs=[InputDataset(namespace=self.namespace, name=d.name, facets=self._facets(d)) for d in inputs],
            outputs=[OutputDataset(namespace=self.namespace, name=d.name, facets=self._facets(d)) for d in outputs])
        try:
            self.client.emit(event)
        except Exception as exc:  # a lineage consumer that is down never fails the flow
            log.warning("could not send the OpenLineage %s event of %s: %s", state, job, exc)
        return event

    @staticmethod
    def _facets(dataset: LineageDataset) -> dict[str, Any]:
        from openlineage.client.facet_v2 import dataset_version_dataset, schema_dataset

        facets: dict[str, Any] = {}
        if dataset.version:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=dataset.version)
        if dataset.columns:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=[
                schema_dataset.SchemaDatasetFacetFields(name=name, type=kind) for name, kind in dataset.columns])
        return facets


def emitter_for(config_path: str | None, profile: str | None) -> Emitter | None:
    """The emitter of the project's ``[openlineage]`` section; None without one (or when the
    project cannot be read: the flow itself will say why)."""
    try:
        config = load_config(config_path, profile=profile)
    except Exception:
        return None
    if config.openlineage is None:
        return None
    try:
        return Emitter(config.openlineage, config)
    except ImportError:
        raise ConfigError("[openlineage] needs openlineage-python: pip install 'loopml[openlineage]'") from None


@contextlib.contextmanager
def flow_run(emitter: Emitter | None, job: str, run_id: str, inputs: Iterable[Any]) -> Iterator[LineageRun]:
    """Tell OpenLineage about one flow run: START now, COMPLETE or FAIL when the block ends (an
    exception is re-raised after FAIL is sent)."""
    run = LineageRun()
    if emitter is None:
        yield run
        return
    given = _unique(d for value in inputs for d in datasets_in(value))
    parent = _CURRENT.get()
    emitter.send("START", job, run_id, inputs=given, parent=parent)
    token = _CURRENT.set((emitter.namespace, job, run_id))
    try:
        with events.collecting() as announced:
            yield run
    except BaseException as exc:
        emitter.send("FAIL", job, run_id, inputs=given, parent=parent, error=exc)
        raise
    finally:
        _CURRENT.reset(token)
    made, read = [], list(given)
    for value in run.outputs:
        made += datasets_in(value)
    for _event, subject in announced:
        made += datasets_in(subject)
        if isinstance(subject, ModelVersion):
            read += _inputs_of_registered(subject)
    emitter.send("COMPLETE", job, run_id, inputs=_unique(read), outputs=_unique(made), parent=parent)
