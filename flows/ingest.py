"""Ingest: validate and version every configured dataset."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import IO_RETRIES, TASK_DEFAULTS, emits_lineage, label_run, on_failure, workspace
from loopml.records import DatasetVersion
from loopml.stages.data import ingest as ingest_stage


@task(**TASK_DEFAULTS, **IO_RETRIES)
def ingest_dataset(config: str | None, profile: str | None, name: str) -> DatasetVersion:
    version, created = ingest_stage(workspace(config, profile), name)
    get_run_logger().info("%s %s (%d rows)", "stored new version" if created else "unchanged:",
                          version.ref, version.row_count)
    return version


@flow(name="loopml-ingest", on_failure=on_failure("ingest"))
@emits_lineage
def ingest(config: str | None = None, profile: str | None = None,
           datasets: list[str] | None = None) -> dict[str, DatasetVersion]:
    """Validate and version the configured datasets (or those named)."""
    ws = workspace(config, profile)
    names = datasets or sorted(ws.config.datasets)
    label_run(ws, f"ingest-{ws.config.project}" + (f"-{'-'.join(datasets)}" if datasets else ""))
    return {name: ingest_dataset(config, profile, name) for name in names}
