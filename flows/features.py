"""Features: apply the feature view to the feature store and materialize it online."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, label_run, on_failure, workspace
from loopml.records import DatasetVersion
from loopml.stages.data import apply_features


@flow(name="loopml-features", on_failure=on_failure("features"))
@emits_lineage
def features(features_version: DatasetVersion, config: str | None = None,
             profile: str | None = None) -> int:
    """Register the feature view with the given rows; fill the online store."""
    ws = workspace(config, profile)
    label_run(ws, f"features-{features_version.name}-{features_version.short_id}", dataset=features_version.ref)
    rows = apply_features(ws, features_version)
    get_run_logger().info("feature view applied from %s; %d entities online", features_version.ref, rows)
    return rows
