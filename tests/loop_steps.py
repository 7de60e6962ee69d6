"""The pipeline's steps as plain calls, for tests that drive the loop without Prefect."""

from __future__ import annotations

from loopml import loop
from loopml.context import Workspace


def train_and_validate(ws: Workspace) -> tuple[loop.Candidate, object, str, int | None]:
    """Ingest, apply features, train and validate: (candidate, evaluation, report key, production version)."""
    activity, _ = loop.ingest(ws, "activity")
    labels, _ = loop.ingest(ws, "labels")
    loop.apply_features(ws, activity)
    train_rows, _ = loop.frames(ws, labels)
    candidate = loop.train(ws, labels, activity, train_rows)
    baseline = loop.production_model(ws, loop.pipeline_config(ws).model_name)
    evaluation, key, _html = loop.validate(ws, candidate, labels)
    return candidate, evaluation, key, baseline.version if baseline else None
