"""Train: point-in-time training rows, the configured trainer, tracked everywhere."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import label_run, on_failure, workspace
from loopml import loop
from loopml.records import DatasetVersion


@flow(name="loopml-train", on_failure=on_failure("train"))
def train(labels: DatasetVersion, features_version: DatasetVersion, config: str | None = None,
          profile: str | None = None, trainer: Any = None) -> loop.Candidate:
    """Train a candidate with the configured trainer, or ``trainer`` given from Python (an object
    with ``fit``/``fingerprint`` or a factory ``build(signature) -> nn.Module``); skipped when the
    same inputs were trained before."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    model_name = loop.pipeline_config(ws).model_name
    label_run(ws, f"train-{model_name}", model=model_name)
    train_rows, holdout = loop.frames(ws, labels)
    logger.info("training on %d rows (%d held out)", len(train_rows), len(holdout))
    candidate = loop.train(
        ws, labels, features_version, train_rows, trainer=trainer,
        on_epoch=lambda e, total, m: logger.info("epoch %d/%d: %s", e, total,
                                                 ", ".join(f"{k}={v:.4f}" for k, v in m.items())))
    label_run(ws, f"train-{model_name}-{candidate.fingerprint[:8]}", model=model_name,
              fingerprint=candidate.fingerprint[:8])
    if candidate.skipped:
        logger.info("training skipped: inputs unchanged (fingerprint %s, run %s)",
                    candidate.fingerprint[:12], candidate.run_id)
    return candidate
