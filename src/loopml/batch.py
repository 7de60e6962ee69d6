"""Batch scoring: a dataset version scored by a registered model, partitioned, written as a version.

The input dataset holds either the model's features, or the entity id and an ``as_of`` timestamp
column, in which case the features are joined point in time from the feature store (the same join
as training). Rows are split into contiguous partitions that score independently (a flow runs them
as concurrent tasks); the result does not depend on how many partitions there are, and is stored as
the dataset ``<model>-scores`` with one row per input row: the input columns, ``prediction``, and
``model_version``. Its version id is the content hash, so re-scoring the same rows with the same
model is the same version.
"""

from __future__ import annotations

import functools
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.artifacts import Predictor
from loopml.errors import DataValidationError, ModelNotFoundError
from loopml.serving.artifact_cache import artifact_file
from loopml.stages.project import pipeline_config, view_of

if TYPE_CHECKING:
    import pandas as pd

    from loopml.context import Workspace
    from loopml.records import DatasetVersion, ModelVersion


def resolve_model(ws: Workspace, name: str, ref: str | None) -> ModelVersion:
    """``ref`` as ``3``, ``v3`` or an alias (default: ``production``)."""
    if ref is None or not str(ref).lstrip("v").isdigit():
        alias = ref or "production"
        try:
            return ws.registry.get(name, alias=alias)
        except ModelNotFoundError:
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} to score with; promote a version "
                                     "or pass model=<version>") from None
    return ws.registry.get(name, int(str(ref).lstrip("v")))


def scoring_rows(ws: Workspace, dataset: DatasetVersion, as_of: str | None = None) -> pd.DataFrame:
    """The rows to score, with the model's features: as stored, or joined point in time."""

    frame = ws.datasets.load(dataset)
    view = view_of(ws)
    if all(f in frame.columns for f in view.features):
        return frame
    if as_of is None or as_of not in frame.columns or view.entity not in frame.columns:
        missing = [f for f in view.features if f not in frame.columns]
        raise DataValidationError(
            f"dataset {dataset.ref} lacks feature(s) {missing}: give the features, or the entity column "
            f"{view.entity!r} and an as_of timestamp column (as_of=...) to join them point in time",
            column=missing[0])
    joined = ws.feature_store.historical_features(view.name, frame, as_of, list(view.features))
    return joined.drop(columns=[f"{view.name}__event_timestamp"], errors="ignore")


BLOCK = 256
"""Rows are scored in blocks of this many, at fixed offsets of the whole dataset. A matrix product's
last bits depend on the batch's shape, so a row must land in the same block however the rows are
partitioned: partitions are whole blocks, and the result is identical byte for byte."""


def partitions_of(rows: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """At most ``n`` contiguous slices of whole blocks, in order."""
    if n < 1:
        raise ValueError("partitions must be at least 1")
    if not len(rows):
        return [rows]
    blocks = -(-len(rows) // BLOCK)
    size = -(-blocks // n) * BLOCK
    return [rows.iloc[i:i + size] for i in range(0, len(rows), size)]


_LOADING = threading.Lock()


def predictor_of(artifact: bytes) -> Any:
    """The predictor in an artifact, loaded once per process (a worker scores many partitions).
    Loads one at a time: torch.export's deserializer is not thread-safe."""
    with _LOADING:
        return _load_predictor(artifact)


@functools.lru_cache(maxsize=4)
def _load_predictor(artifact: bytes) -> Any:
    return Predictor.from_bytes(artifact)


def score_partition(predictor: Any, rows: pd.DataFrame) -> list[Any]:
    """The model's answer per row: a score or value, or the predicted class (multiclass)."""
    import numpy as np

    if not len(rows):
        return []
    scores = np.concatenate([predictor.predict_frame(rows.iloc[i:i + BLOCK]) for i in range(0, len(rows), BLOCK)])
    signature = predictor.signature
    if signature.task == "multiclass":
        return [signature.classes[i] for i in np.argmax(scores, axis=1)]
    return [float(v) for v in np.asarray(scores, dtype=float).reshape(-1)]


def write_scores(ws: Workspace, model: ModelVersion, rows: pd.DataFrame,
                 predictions: list[Any]) -> tuple[DatasetVersion, bool]:
    """Store the scored rows as a version of ``<model>-scores``."""
    out = rows.reset_index(drop=True).copy()
    out["prediction"] = predictions
    out["model_version"] = model.version
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.parquet"
        out.to_parquet(path, index=False)
        return ws.datasets.ingest(f"{model.name}-scores", path)


def score_dataset(ws: Workspace, dataset_ref: str, *, model_ref: str | None = None, as_of: str | None = None,
                  partitions: int = 1) -> tuple[DatasetVersion, ModelVersion, bool]:
    """Score a dataset version in ``partitions`` slices, in this process (the flow runs them as tasks)."""
    name = pipeline_config(ws).model_name
    model = resolve_model(ws, name, model_ref)
    rows = scoring_rows(ws, ws.datasets.get(dataset_ref), as_of)
    predictor = Predictor.from_bytes(artifact_file(ws, model).read_bytes())
    predictions = [p for part in partitions_of(rows, partitions) for p in score_partition(predictor, part)]
    version, created = write_scores(ws, model, rows, predictions)
    return version, model, created
