"""Train: point-in-time training rows, a deterministic PyTorch model, tracked everywhere."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import on_failure, workspace
from loopml import loop
from loopml.records import DatasetVersion


@flow(name="loopml-train", on_failure=on_failure("train"))
def train(labels: DatasetVersion, features_version: DatasetVersion, config: str | None = None,
          profile: str | None = None) -> loop.Candidate:
    """Train a candidate (skipped when the same inputs were trained before)."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    train_rows, holdout = loop.frames(ws, labels)
    logger.info("training on %d rows (%d held out)", len(train_rows), len(holdout))
    candidate = loop.train(
        ws, labels, features_version, train_rows,
        on_epoch=lambda e, m: logger.info("epoch %d: %s", e + 1,
                                          ", ".join(f"{k}={v:.4f}" for k, v in m.items())))
    if candidate.skipped:
        logger.info("training skipped: inputs unchanged (fingerprint %s, run %s)",
                    candidate.fingerprint[:12], candidate.run_id)
    return candidate
