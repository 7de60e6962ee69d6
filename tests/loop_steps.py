"""The pipeline's steps as plain calls, for tests that drive the loop without Prefect."""

from __future__ import annotations

from loopml.context import Workspace
from loopml.stages.data import apply_features, frames, ingest
from loopml.stages.project import pipeline_config, production_model
from loopml.stages.training import Candidate, train
from loopml.stages.validation import validate


def train_and_validate(ws: Workspace) -> tuple[Candidate, object, str, int | None]:
    """Ingest, apply features, train and validate: (candidate, evaluation, report key, production version)."""
    activity, _ = ingest(ws, "activity")
    labels, _ = ingest(ws, "labels")
    apply_features(ws, activity)
    train_rows, _ = frames(ws, labels)
    candidate = train(ws, labels, activity, train_rows)
    baseline = production_model(ws, pipeline_config(ws).model_name)
    evaluation, key, _html = validate(ws, candidate, labels)
    return candidate, evaluation, key, baseline.version if baseline else None
