"""The whole loop: ingest, features, train, validate, register, deploy."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import workspace
from flows.deploy import deploy
from flows.features import features
from flows.ingest import ingest
from flows.register import register
from flows.train import train
from flows.validate import validate
from loopml import loop


@flow(name="loopml-pipeline", log_prints=True)
def pipeline(config: str | None = None, profile: str | None = None,
             deploy_model: bool = True, trainer: Any = None) -> loop.PipelineResult:
    """Version the data, train, validate against production, register, promote and serve.

    ``trainer`` (ad hoc, from Python) replaces the configured one: a Trainer object or a factory
    ``build(signature) -> nn.Module``."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    cfg = loop.pipeline_config(ws)
    versions = ingest(config=config, profile=profile)
    labels, feature_rows = versions[cfg.labels_dataset], versions[cfg.features.dataset]
    features(feature_rows, config=config, profile=profile)
    candidate = train(labels, feature_rows, config=config, profile=profile, trainer=trainer)
    existing = loop.registered_version_of(ws, candidate) if candidate.skipped else None
    if existing is not None:
        logger.info("%s already holds this model (%s); nothing to validate or register",
                    existing.ref, existing.status)
        url = deploy(config=config, profile=profile) if deploy_model else None
        production = loop.production_model(ws, cfg.model_name)
        return loop.PipelineResult(existing.ref, existing.status,
                                   production is not None and production.version == existing.version,
                                   True, existing.lineage.get("validation_report"), (), url)
    baseline = loop.production_model(ws, cfg.model_name)
    report, key, path = validate(candidate, labels, config=config, profile=profile)
    model, event = register(candidate, report, key, baseline.version if baseline else None,
                            config=config, profile=profile)
    url = deploy(config=config, profile=profile) if deploy_model else None
    return loop.PipelineResult(model.ref, model.status, event is not None, candidate.skipped, path,
                               tuple(c.name for c in report.failed_checks), url)


if __name__ == "__main__":
    print(pipeline())
