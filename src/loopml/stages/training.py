"""Stage 3: train a candidate with the configured trainer, tracked everywhere, or reuse an identical one."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import platform
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import __version__, events, progress, tasks
from loopml.artifacts import Predictor
from loopml.capabilities import DescribedTrainer
from loopml.errors import ConfigError, ObjectExistsError
from loopml.records import RunInfo
from loopml.stages.project import pipeline_config, view_of
from loopml.tracking import TrackingSession
from loopml.trainers import TrainRequest, ad_hoc_trainer, check_request
from loopml.training import training_fingerprint

if TYPE_CHECKING:
    import pandas as pd

    from loopml.context import Workspace
    from loopml.features import FeatureView
    from loopml.records import DatasetVersion

ARTIFACT_NAME = "model.pt2"
OUTPUT_COLUMN = "model_output"
"""Reference column holding the model's own output on its training inputs (for output drift)."""
REFERENCE_ROWS = 50_000


@dataclass(frozen=True)
class Candidate:
    """A trained model artifact in the store, and where it came from."""

    model_name: str
    fingerprint: str
    artifact_key: str
    artifact_sha256: str
    run_id: str
    metrics: dict[str, float]
    params: dict[str, Any]
    dataset_versions: dict[str, str]
    skipped: bool


def git_commit(root: Path) -> str:
    """The project's git commit (``unknown`` outside a repository)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty(root: Path) -> bool | None:
    """Whether the project's tree has uncommitted changes (None outside a repository)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def environment() -> dict[str, str]:
    """What a model was trained with (recorded in the registry)."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "loopml": __version__,
            "platform": platform.platform(), "torch_threads": str(torch.get_num_threads())}


def train(ws: Workspace, labels: DatasetVersion, features: DatasetVersion, train_frame: pd.DataFrame,
          on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
          trainer: Any = None, retrain: str | None = None) -> Candidate:
    """Train a candidate with the configured trainer (or ``trainer``), or reuse an identical one.

    The cache key is a content hash of both dataset versions, the task, the feature config and the
    trainer's fingerprint (its options and code), so a rerun with unchanged inputs skips training
    (``skipped=True``). ``retrain`` (why) trains anyway, into a folder of its own, and tags the run
    with the reason. The label is checked against the task before anything trains. Announces
    ``loopml.model.trained`` when a model was trained.
    """
    cfg = pipeline_config(ws)
    view = view_of(ws)
    trainer = ad_hoc_trainer(trainer) if trainer is not None else ws.trainer
    classes = tasks.check_label(train_frame[cfg.label], cfg.task, cfg.label) if len(train_frame) else ()
    described = ws.ability(trainer, DescribedTrainer)
    trainer_params = dict(described.params()) if described is not None else {"trainer": trainer.name}
    params = {**trainer_params, "task": cfg.task, "seed": cfg.training.seed, "features": list(view.features)}
    fingerprint = training_fingerprint(labels.id, features.id, json.dumps(params, sort_keys=True, default=str),
                                       cfg.features.model_dump_json(), trainer.fingerprint(),
                                       cfg.training.model_dump_json())
    base = f"models/{cfg.model_name}/{fingerprint[:16]}/"
    datasets = {"labels": labels.ref, "features": features.ref}
    if retrain is not None:
        if not retrain.strip():
            raise ConfigError("retrain: say why (e.g. --retrain 'labels corrected upstream'); it is kept with the run")
        base += f"retrained-{uuid.uuid4().hex[:8]}/"
    elif ws.store.exists(base + "train.json"):
        meta = json.loads(ws.store.get(base + "train.json"))
        return Candidate(cfg.model_name, fingerprint, base + ARTIFACT_NAME, meta["sha256"], meta["run_id"],
                         meta["metrics"], meta["params"], datasets, skipped=True)

    declared = ws.config.datasets[cfg.features.dataset].columns if cfg.features.dataset in ws.config.datasets else {}
    request = TrainRequest(train_frame, cfg.label, view.numeric, view.categorical, cfg.task, classes,
                           seed=cfg.training.seed,
                           integer=tuple(c for c in view.numeric if c in declared and declared[c].type == "int"))
    check_request(request)
    run = RunInfo(uuid.uuid4().hex, experiment=cfg.model_name, name=f"train-{cfg.model_name}-{fingerprint[:8]}",
                  tags={"loopml.dataset.labels": labels.ref, "loopml.dataset.features": features.ref,
                        "loopml.git_commit": git_commit(ws.config.root), "loopml.task": cfg.task,
                        "loopml.trainer": trainer.name, "loopml.fingerprint": fingerprint,
                        **({"loopml.retrain_reason": retrain} if retrain else {})})
    session = TrackingSession(ws.trackers, run)
    session.log_params(params)
    stage = f"train {cfg.model_name} {fingerprint[:8]}"

    def epoch_done(epoch: int, total: int, metrics: dict[str, float]) -> None:
        session.log_metrics(metrics, step=epoch)
        progress.report(stage, epoch, total, metrics)
        if on_epoch:
            on_epoch(epoch, total, metrics)

    try:
        trained = trainer.fit(dataclasses.replace(request, on_epoch=epoch_done))
    except BaseException:
        session.end("FAILED")
        raise
    info = ws.store.put(base + ARTIFACT_NAME, trained.artifact, metadata={"run_id": run.run_id})
    ws.store.put(base + "reference.parquet", _reference_sample(train_frame, view, trained.artifact))
    metrics = dict(trained.history[-1]) if trained.history else {}
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / ARTIFACT_NAME
        model_file.write_bytes(trained.artifact)
        session.log_model(model_file)
    session.set_tags({"loopml.artifact_sha256": info.sha256})
    session.end("FINISHED")
    meta = {"sha256": info.sha256, "run_id": run.run_id, "metrics": metrics, "params": params,
            "tracker_failures": session.failures}
    # A concurrent identical run may have finished first: same model, keep theirs.
    with contextlib.suppress(ObjectExistsError):
        ws.store.put(base + "train.json", json.dumps(meta, sort_keys=True, default=str).encode())
    trained_run = events.TrainedRun(run, base + ARTIFACT_NAME, metrics)
    events.announce(ws, events.trained_event(ws, cfg.model_name, trained_run), subject=trained_run)
    return Candidate(cfg.model_name, fingerprint, base + ARTIFACT_NAME, info.sha256, run.run_id, metrics,
                     params, datasets, skipped=False)


def _reference_sample(frame: pd.DataFrame, view: FeatureView, artifact: bytes) -> bytes:
    """The training inputs that drift is measured against (a seeded sample if large), with the
    model's own outputs on them, so the output distribution is monitored too."""
    sample = frame[list(view.features)]
    if len(sample) > REFERENCE_ROWS:
        sample = sample.sample(REFERENCE_ROWS, random_state=0)
    sample = sample.reset_index(drop=True).copy()
    predictor = Predictor.from_bytes(artifact)
    sig = predictor.signature
    sample[OUTPUT_COLUMN] = tasks.output_summary(sig.task, predictor.predict_frame(sample), sig.classes)
    buf = io.BytesIO()
    sample.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()
