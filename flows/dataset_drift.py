"""Dataset drift: a dataset version against the production model's training inputs, sketched in
partitions run as concurrent tasks (``dataset_drift``) or on a Dask cluster (``dataset_drift_on_dask``)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.common import TASK_DEFAULTS, emits_lineage, label_run, on_failure, publish_markdown, workspace
from loopml import batch, compute, dataset_drift
from loopml.records import DriftReport
from loopml.stages.project import pipeline_config


@task(**TASK_DEFAULTS)
def sketch_part(rows, numeric: tuple[str, ...], categorical: tuple[str, ...], edges: dict, index: int) -> bytes:
    get_run_logger().info("partition %d: %d rows", index, len(rows))
    return dataset_drift.sketch_partition(rows, numeric, categorical, edges)


@flow(name="loopml-dataset-drift", on_failure=on_failure("dataset-drift"))
@emits_lineage
def dataset_drift_check(dataset: str, model: str | None = None, as_of: str | None = None, partitions: int = 4,
                        config: str | None = None, profile: str | None = None) -> DriftReport:
    """Has ``dataset`` (a dataset ref holding the model's features, or the entity and an ``as_of``
    column) drifted from what ``model`` (default: production) was trained on? The verdict is the
    same for any ``partitions``."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    name = pipeline_config(ws).model_name
    version = batch.resolve_model(ws, name, model)
    label_run(ws, f"dataset-drift-{name}-v{version.version}", model=name, version=f"v{version.version}")
    rows = batch.scoring_rows(ws, ws.datasets.get(dataset), as_of)
    drift_plan = dataset_drift.plan(ws, version)
    parts = batch.partitions_of(rows, partitions)
    futures = [sketch_part.submit(part, drift_plan.numeric, drift_plan.categorical, drift_plan.edges, i)
               for i, part in enumerate(parts)]
    report, key = dataset_drift.report(ws, drift_plan, [f.result() for f in futures], dataset)
    rows_md = "\n".join(f"| {f.feature} | {f.kind} | {f.statistic:.4g} | {f.p_adjusted:.3g} | "
                        f"{'**DRIFT**' if f.drifted else 'ok'} |" for f in report.features)
    publish_markdown(f"{name}-dataset-drift", f"# {dataset} vs {version.ref}: {report.reason}\n\n"
                     "| feature | test | statistic | Holm p | verdict |\n|---|---|---|---|---|\n"
                     f"{rows_md}\n\nReport: `{key}`", "drift of a dataset version vs the training inputs")
    logger.info("%s vs %s over %d rows in %d partitions: %s", dataset, version.ref, len(rows), len(parts),
                report.reason)
    return report


dataset_drift_on_dask = compute.on_dask(dataset_drift_check, "loopml-dataset-drift-dask")  # None without dask
