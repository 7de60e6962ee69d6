"""Train: point-in-time training rows, the configured trainer, tracked everywhere."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.common import emits_lineage, label_run, on_failure, workspace
from loopml.keys import prefect_artifact_key
from loopml.records import DatasetVersion
from loopml.stages.data import frames
from loopml.stages.project import pipeline_config
from loopml.stages.training import Candidate
from loopml.stages.training import train as train_stage


@flow(name="loopml-train", on_failure=on_failure("train"))
@emits_lineage
def train(labels: DatasetVersion, features_version: DatasetVersion, config: str | None = None,
          profile: str | None = None, trainer: Any = None, retrain: str | None = None) -> Candidate:
    """Train a candidate with the configured trainer, or ``trainer`` given from Python (an object
    with ``fit``/``fingerprint`` or a factory ``build(signature) -> nn.Module``); skipped when the
    same inputs were trained before."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    model_name = pipeline_config(ws).model_name
    label_run(ws, f"train-{model_name}", model=model_name)
    train_rows, holdout = frames(ws, labels)
    logger.info("training on %d rows (%d held out)", len(train_rows), len(holdout))
    progress = create_progress_artifact(0.0, key=prefect_artifact_key(f"{model_name}-training"),
                                        description=f"training {model_name}: share of epochs done")

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        logger.info("epoch %d/%d: %s", epoch, total, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        update_progress_artifact(progress, 100.0 * epoch / max(total, 1))

    if retrain:
        logger.info("retraining even if the inputs are unchanged: %s", retrain)
    candidate = train_stage(ws, labels, features_version, train_rows, trainer=trainer, on_epoch=on_epoch,
                            retrain=retrain)
    update_progress_artifact(progress, 100.0)
    label_run(ws, f"train-{model_name}-{candidate.fingerprint[:8]}", model=model_name,
              fingerprint=candidate.fingerprint[:8])
    if candidate.skipped:
        logger.info("training skipped: inputs unchanged (fingerprint %s, run %s)",
                    candidate.fingerprint[:12], candidate.run_id)
    return candidate
