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


def loop_once(config) -> object:
    """Ingest, features, train, validate and register (promote or start a canary), as the pipeline does."""
    from loopml.stages.release import register_and_promote

    ws = Workspace.open(config)
    cfg = pipeline_config(ws)
    labels, _ = ingest(ws, cfg.labels_dataset)
    feature_rows, _ = ingest(ws, cfg.features.dataset)
    apply_features(ws, feature_rows)
    train_rows, _ = frames(ws, labels)
    candidate = train(ws, labels, feature_rows, train_rows)
    baseline = production_model(ws, cfg.model_name)
    evaluation, key, _ = validate(ws, candidate, labels)
    model, _ = register_and_promote(ws, candidate, evaluation.report, key, baseline.version if baseline else None)
    return model
