"""Batch score: a dataset version scored by a registered model, in partitions run as concurrent tasks."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import TASK_DEFAULTS, label_run, on_failure, workspace
from loopml import batch, loop
from loopml.artifacts import Predictor
from loopml.records import DatasetVersion


@task(**TASK_DEFAULTS)
def score_part(predictor: Predictor, rows, index: int) -> list:
    get_run_logger().info("partition %d: %d rows", index, len(rows))
    return batch.score_partition(predictor, rows)


@flow(name="loopml-batch-score", on_failure=on_failure("batch-score"))
def batch_score(dataset: str, model: str | None = None, as_of: str | None = None, partitions: int = 4,
                config: str | None = None, profile: str | None = None) -> DatasetVersion:
    """Score ``dataset`` (a dataset ref) with ``model`` (a version or alias; default production).
    The rows hold the model's features, or the entity and an ``as_of`` column to join them point in
    time. Writes the dataset ``<model>-scores``; the result is the same for any ``partitions``."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    name = loop.pipeline_config(ws).model_name
    version = batch.resolve_model(ws, name, model)
    label_run(ws, f"batch-score-{name}-v{version.version}", model=name, version=f"v{version.version}")
    rows = batch.scoring_rows(ws, ws.datasets.get(dataset), as_of)
    predictor = Predictor.from_bytes(loop.artifact_file(ws, version).read_bytes())
    parts = batch.partitions_of(rows, partitions)
    futures = [score_part.submit(predictor, part, i) for i, part in enumerate(parts)]
    predictions = [p for future in futures for p in future.result()]
    result, created = batch.write_scores(ws, version, rows, predictions)
    logger.info("scored %d rows of %s with %s in %d partitions: %s (%s)", len(rows), dataset, version.ref,
                len(parts), result.ref, "new version" if created else "same as before")
    return result
