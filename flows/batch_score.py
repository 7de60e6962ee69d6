"""Batch score: a dataset version scored by a registered model, in partitions run as concurrent tasks.

``batch_score`` runs the partitions on Prefect's thread pool; ``batch_score_on_dask`` is the same flow
on a Dask cluster (``loopml.compute.dask_task_runner``: ``LOOPML_DASK_ADDRESS``, or a local cluster).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import TASK_DEFAULTS, emits_lineage, label_run, on_failure, workspace
from loopml import batch, compute
from loopml.records import DatasetVersion
from loopml.serving.artifact_cache import artifact_file
from loopml.stages.project import pipeline_config


@task(**TASK_DEFAULTS)
def score_part(artifact: bytes, rows, index: int) -> list:
    """Score one partition. Takes the artifact's bytes (loopml's own format, no pickle), so the task
    ships to another process or machine as it is."""
    get_run_logger().info("partition %d: %d rows", index, len(rows))
    return batch.score_partition(batch.predictor_of(artifact), rows)


@flow(name="loopml-batch-score", on_failure=on_failure("batch-score"))
@emits_lineage
def batch_score(dataset: str, model: str | None = None, as_of: str | None = None, partitions: int = 4,
                config: str | None = None, profile: str | None = None) -> DatasetVersion:
    """Score ``dataset`` (a dataset ref) with ``model`` (a version or alias; default production).
    The rows hold the model's features, or the entity and an ``as_of`` column to join them point in
    time. Writes the dataset ``<model>-scores``; the result is the same for any ``partitions``."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    name = pipeline_config(ws).model_name
    version = batch.resolve_model(ws, name, model)
    label_run(ws, f"batch-score-{name}-v{version.version}", model=name, version=f"v{version.version}")
    rows = batch.scoring_rows(ws, ws.datasets.get(dataset), as_of)
    artifact = artifact_file(ws, version).read_bytes()
    parts = batch.partitions_of(rows, partitions)
    futures = [score_part.submit(artifact, part, i) for i, part in enumerate(parts)]
    predictions = [p for future in futures for p in future.result()]
    result, created = batch.write_scores(ws, version, rows, predictions)
    logger.info("scored %d rows of %s with %s in %d partitions: %s (%s)", len(rows), dataset, version.ref,
                len(parts), result.ref, "new version" if created else "same as before")
    return result


batch_score_on_dask = compute.on_dask(batch_score, "loopml-batch-score-dask")  # None without the dask extra
