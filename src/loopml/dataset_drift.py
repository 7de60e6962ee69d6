"""Dataset drift: has a dataset version (a new training batch, a scoring batch) drifted from the data
a registered model was trained on? The rows are split into partitions, each partition is sketched on
its own (a flow runs them as tasks, on threads or a Dask cluster), the sketches are merged exactly,
and the same tests as the live monitor run on the merged sketch, so the verdict is the same for any
number of partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loopml import drift, sketches
from loopml.stages.drift_check import reference_key, reference_sketch
from loopml.stages.project import pipeline_config, view_of

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from loopml.context import Workspace
    from loopml.records import DriftReport, ModelVersion
    from loopml.sketches import WindowSketch


@dataclass(frozen=True)
class DriftPlan:
    """What every partition needs to be sketched comparably: the features and the reference's edges."""

    model: ModelVersion
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    edges: dict[str, np.ndarray]
    reference: WindowSketch


def plan(ws: Workspace, model: ModelVersion) -> DriftPlan:
    """The model's features and its reference sketch (kept in the store beside the reference)."""

    view = view_of(ws)
    numeric, categorical = tuple(view.numeric), tuple(view.categorical)
    sketch = reference_sketch(ws, numeric, categorical, key=reference_key(model))  # rows read once
    return DriftPlan(model, numeric, categorical, sketch.edges, sketch)


def sketch_partition(rows: pd.DataFrame, numeric: tuple[str, ...], categorical: tuple[str, ...],
                     edges: dict[str, Any]) -> bytes:
    """One partition's sketch, as bytes (``.npz``, no pickle) so it ships from any worker."""
    return sketches.sketch_frame(rows, numeric=numeric, categorical=categorical, edges=edges).to_bytes()


def report(ws: Workspace, drift_plan: DriftPlan, partitions: list[bytes], dataset_ref: str) -> tuple[DriftReport, str]:
    """Merge the partitions' sketches, test, and store the HTML report. Returns (report, report key)."""
    cfg = pipeline_config(ws)
    merged = sketches.merge_all(sketches.WindowSketch.from_bytes(p) for p in partitions)
    result = drift.drift_from_sketches(drift_plan.reference, merged, alpha=cfg.drift.alpha,
                                       min_samples=cfg.drift.min_samples, model=drift_plan.model.ref,
                                       reference_ref=f"training inputs of {drift_plan.model.ref} vs {dataset_ref}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"reports/{drift_plan.model.name}/dataset-drift/{dataset_ref.replace('@', '-')}-{stamp}.html"
    ws.store.put(key, drift.render_html(result, drift_plan.reference, merged).encode(),
                 metadata={"content-type": "text/html"})
    return result, key
