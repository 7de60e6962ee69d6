"""The steps of the loop, as plain functions over a :class:`Workspace`.

Prefect flows in ``flows/`` call these and add orchestration (retries, logs, artifacts, events);
they hold no logic of their own, so every step is also usable from a notebook or a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import __version__, events
from loopml.context import Workspace, current_actor
from loopml.errors import (
    ConfigError,
    ModelNotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    StaleAliasError,
)
from loopml.features import FeatureView
from loopml.records import (
    DatasetVersion,
    DriftReport,
    GateCheck,
    GateReport,
    ModelVersion,
    PromotionEvent,
    RunInfo,
)
from loopml.tracking import TrackingSession
from loopml.training import holdout_mask, time_holdout_mask, training_fingerprint, training_frame

if TYPE_CHECKING:
    import pandas as pd

    from loopml.config import PipelineConfig
    from loopml.validation import Evaluation

log = logging.getLogger(__name__)
PRODUCTION = "production"


def pipeline_config(ws: Workspace) -> PipelineConfig:
    if ws.config.pipeline is None:
        raise ConfigError(f"{ws.config.source_file or 'loopml.toml'} has no [pipeline] table; "
                          "create an example project with `loopml init --example churn`")
    return ws.config.pipeline


def view_of(ws: Workspace) -> FeatureView:
    cfg = pipeline_config(ws)
    return FeatureView.from_config(cfg.features, cfg.entity)


# ---------------------------------------------------------------------------- data
def ingest(ws: Workspace, name: str, source: str | Path | None = None) -> tuple[DatasetVersion, bool]:
    """Validate and version one dataset; fires ``loopml_after_dataset_versioned``."""
    if source is None:
        cfg = ws.config.datasets.get(name)
        if cfg is None or cfg.source is None:
            raise ConfigError(f"dataset {name!r} has no source: pass one or set "
                              f"[datasets.{name}] source = '…' in loopml.toml")
        source = cfg.source
    path = Path(source)
    if not path.is_absolute() and "://" not in str(source):
        source = ws.config.root / path
    version, created = ws.datasets.ingest(name, source, columns=ws.dataset_rules(name))
    ws.notify("loopml_after_dataset_versioned", dataset=version, created=created)
    return version, created


def apply_features(ws: Workspace, features: DatasetVersion) -> int:
    """Register the feature view with its source rows and materialize the online store."""
    view = view_of(ws)
    frame = ws.datasets.load(features)
    ws.feature_store.apply(view, frame)
    end = frame[view.timestamp].max().to_pydatetime()
    return ws.feature_store.materialize(view.name, end)


def frames(ws: Workspace, labels: DatasetVersion,
           extra_features: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): point-in-time training rows, split by a stable hash of the entity.

    ``extra_features`` adds columns beyond the current view (e.g. those the production model was
    trained on, when the feature set changed), so both models see the same rows."""
    cfg = pipeline_config(ws)
    view = view_of(ws)
    wanted = list(dict.fromkeys([*view.features, *extra_features]))
    frame = training_frame(ws.datasets.load(labels), ws.feature_store, view, cfg, wanted)
    holdout = cfg.training.holdout
    if holdout.after is not None:
        mask = time_holdout_mask(frame[cfg.label_timestamp], holdout.after)
    else:
        mask = holdout_mask(frame[cfg.entity], holdout.fraction)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


# ---------------------------------------------------------------------------- training
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
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "loopml": __version__,
            "platform": platform.platform()}


def train(ws: Workspace, labels: DatasetVersion, features: DatasetVersion, train_frame: pd.DataFrame,
          on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
          trainer: Any = None) -> Candidate:
    """Train a candidate with the configured trainer (or ``trainer``), or reuse an identical one.

    The cache key is a content hash of both dataset versions, the task, the feature config and the
    trainer's fingerprint (its options and code), so a rerun with unchanged inputs skips training
    (``skipped=True``). The label is checked against the task before anything trains.
    """
    from loopml import progress, tasks
    from loopml.trainers import TrainRequest, ad_hoc_trainer, check_request

    cfg = pipeline_config(ws)
    view = view_of(ws)
    trainer = ad_hoc_trainer(trainer) if trainer is not None else ws.trainer
    classes = tasks.check_label(train_frame[cfg.label], cfg.task, cfg.label) if len(train_frame) else ()
    trainer_params = trainer.params() if hasattr(trainer, "params") else {"trainer": trainer.name}
    params = {**trainer_params, "task": cfg.task, "seed": cfg.training.seed, "features": list(view.features)}
    fingerprint = training_fingerprint(labels.id, features.id, json.dumps(params, sort_keys=True, default=str),
                                       cfg.features.model_dump_json(), trainer.fingerprint(),
                                       cfg.training.model_dump_json())
    base = f"models/{cfg.model_name}/{fingerprint[:16]}/"
    datasets = {"labels": labels.ref, "features": features.ref}
    if ws.store.exists(base + "train.json"):
        meta = json.loads(ws.store.get(base + "train.json"))
        return Candidate(cfg.model_name, fingerprint, base + ARTIFACT_NAME, meta["sha256"], meta["run_id"],
                         meta["metrics"], meta["params"], datasets, skipped=True)

    request = TrainRequest(train_frame, cfg.label, view.numeric, view.categorical, cfg.task, classes,
                           seed=cfg.training.seed)
    check_request(request)
    run = RunInfo(uuid.uuid4().hex, experiment=cfg.model_name, name=f"train-{cfg.model_name}-{fingerprint[:8]}",
                  tags={"loopml.dataset.labels": labels.ref, "loopml.dataset.features": features.ref,
                        "loopml.git_commit": git_commit(ws.config.root), "loopml.task": cfg.task,
                        "loopml.trainer": trainer.name, "loopml.fingerprint": fingerprint})
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
    ws.notify("loopml_after_model_trained", run=run, artifact_key=base + ARTIFACT_NAME, metrics=metrics)
    return Candidate(cfg.model_name, fingerprint, base + ARTIFACT_NAME, info.sha256, run.run_id, metrics,
                     params, datasets, skipped=False)


ARTIFACT_NAME = "model.pt2"
OUTPUT_COLUMN = "model_output"
"""Reference column holding the model's own output on its training inputs (for output drift)."""
REFERENCE_ROWS = 50_000


def _reference_sample(frame: pd.DataFrame, view: FeatureView, artifact: bytes) -> bytes:
    """The training inputs that drift is measured against (a seeded sample if large), with the
    model's own outputs on them, so the output distribution is monitored too."""
    import io

    from loopml import tasks
    from loopml.artifacts import Predictor

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


def drift_reference(ws: Workspace, model: ModelVersion) -> pd.DataFrame:
    """The inputs ``model`` was trained on, as stored next to its artifact. The frame's
    ``attrs["loopml_key"]`` is that store key (``check_drift`` caches the reference's sketch beside it)."""
    import io

    import pandas as pd

    key = reference_key(model)
    frame = pd.read_parquet(io.BytesIO(ws.store.get(key)))
    frame.attrs["loopml_key"] = key
    return frame


def reference_key(model: ModelVersion) -> str:
    """Where ``model``'s training inputs are stored (beside its artifact)."""
    return model.artifact_key.rsplit("/", 1)[0] + "/reference.parquet"


def reference_sketch(ws: Workspace, numeric: Sequence[str], categorical: Sequence[str], *,
                     key: str | None, frame: pd.DataFrame | None = None) -> Any:
    """The drift sketch of the reference stored at ``key``: built once per model version and feature
    set and kept beside it (``reference-sketch-<features>.npz``), so checks on any machine reuse it.
    The reference rows are read only when the sketch is not cached yet (from ``frame`` when the
    caller holds them already); without a ``key``, ``frame`` is sketched and nothing is kept."""
    import io

    import pandas as pd

    from loopml import sketches

    if not key:
        assert frame is not None, "reference_sketch needs a key or a frame"
        return sketches.sketch_frame(frame, numeric=numeric, categorical=categorical)
    features = hashlib.sha256(json.dumps([list(numeric), list(categorical)]).encode()).hexdigest()[:12]
    cache = f"{key.rsplit('/', 1)[0]}/reference-sketch-{features}.npz"
    with contextlib.suppress(ObjectNotFoundError):
        return sketches.WindowSketch.from_bytes(ws.store.get(cache))
    if frame is None:
        frame = pd.read_parquet(io.BytesIO(ws.store.get(key)))
    built = sketches.sketch_frame(frame, numeric=numeric, categorical=categorical)
    with contextlib.suppress(ObjectExistsError):  # another monitor cached it first: same counts
        ws.store.put(cache, built.to_bytes(), metadata={"content-type": "application/octet-stream"})
    return built


# ---------------------------------------------------------------------------- validation
def production_model(ws: Workspace, name: str) -> ModelVersion | None:
    try:
        return ws.registry.get(name, alias=PRODUCTION)
    except ModelNotFoundError:
        return None


def validate(ws: Workspace, candidate: Candidate, labels: DatasetVersion) -> tuple[Evaluation, str, str]:
    """Run every gate on the holdout rows of ``labels``; store the HTML report.

    Returns (evaluation, report key, html)."""
    from loopml import validation
    from loopml.artifacts import Predictor

    cfg = pipeline_config(ws)
    artifact = ws.store.get(candidate.artifact_key)
    cand = Predictor.from_bytes(artifact)
    prod = production_model(ws, cfg.model_name)
    baseline = Predictor.from_bytes(ws.store.get(prod.artifact_key)) if prod else None
    extra = (*baseline.signature.numeric, *baseline.signature.categorical) if baseline else ()
    _, holdout = frames(ws, labels, extra)
    sample = holdout[list(view_of(ws).features)].head(5).to_dict("records")
    evaluation = validation.evaluate(
        model_name=cfg.model_name, candidate_ref=f"{candidate.model_name} candidate {candidate.fingerprint[:8]}",
        candidate=cand, baseline_ref=prod.ref if prod else None, baseline=baseline, holdout=holdout,
        label=cfg.label, sensitive=cfg.sensitive_attribute, gates=cfg.gates, thresholds=cfg.thresholds,
        servability=lambda: ws.serving.smoke_test(artifact, sample) if sample else (False, "no holdout rows"),
        extra_checks=ws.gate_checks,
    )
    if evaluation.report.passed:
        veto = ws.manager.first_veto(context=ws.hook_context, model_name=cfg.model_name,
                                     candidate=evaluation.report.candidate, report=evaluation.report)
        if veto is not None:
            blocked = GateCheck("promotion-veto", None, None, False, veto)
            evaluation = dataclasses.replace(evaluation, report=dataclasses.replace(
                evaluation.report, checks=(*evaluation.report.checks, blocked)))
    html = validation.render_html(evaluation)
    key = f"reports/{cfg.model_name}/{candidate.fingerprint[:16]}/validation-{_stamp()}.html"
    ws.store.put(key, html.encode(), metadata={"content-type": "text/html"})
    return evaluation, key, html


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# ---------------------------------------------------------------------------- registry
def register_and_promote(ws: Workspace, candidate: Candidate, report: GateReport,
                         report_key: str, baseline_version: int | None) -> tuple[ModelVersion, PromotionEvent | None]:
    """Register the candidate (approved or rejected); move production only if every gate passed.

    The move is a compare-and-set against the production version the candidate was validated
    against: if someone promoted meanwhile, the candidate stays approved but production does not
    move, since the comparison it won is stale.
    """
    cfg = pipeline_config(ws)
    info = ws.store.info(candidate.artifact_key)  # the registry only points at stored, hashed bytes
    if info.sha256 != candidate.artifact_sha256:
        raise ConfigError(f"artifact {candidate.artifact_key} changed since training")
    report_sha = hashlib.sha256(ws.store.get(report_key)).hexdigest()
    status = "approved" if report.passed else "rejected"
    reason = ("all gates passed" if report.passed else
              "rejected: " + "; ".join(f"{c.name}: {c.reason}" for c in report.failed_checks))
    model = ws.registry.register(
        cfg.model_name, artifact_key=candidate.artifact_key, artifact_sha256=candidate.artifact_sha256,
        status=status, actor=current_actor(), reason=reason,
        dataset_version=candidate.dataset_versions["labels"], git_commit=git_commit(ws.config.root),
        run_id=candidate.run_id, params=candidate.params,
        metrics={**candidate.metrics, **{f"holdout_{k}": v for k, v in report.metrics.items()}},
        environment=environment(),
        lineage={"datasets": candidate.dataset_versions, "fingerprint": candidate.fingerprint,
                 "feature_view": cfg.features.view, "features": list(view_of(ws).features),
                 "entity": cfg.entity, "task": cfg.task, "validation_report": report_key,
                 "validation_report_sha256": report_sha,
                 "gates": {c.name: {"passed": c.passed, "value": c.value} for c in report.checks}},
    )
    ws.notify("loopml_after_model_registered", model=model)
    with tempfile.TemporaryDirectory() as tmp:  # the training run learns what it became
        card = Path(tmp) / "model_card.md"
        card.write_text(model_card(model, report), encoding="utf-8")
        html = Path(tmp) / "validation_report.html"
        html.write_bytes(ws.store.get(report_key))
        gate_metrics = {**{f"holdout_{k}": float(v) for k, v in report.metrics.items()},
                         **{f"gate_{c.name}": float(c.value) for c in report.checks
                            if isinstance(c.value, int | float) and not isinstance(c.value, bool)}}
        for tracker in ws.trackers:  # the gate numbers as metrics: runs sort and compare on them
            _safely(tracker.log_metrics, candidate.run_id, gate_metrics, 0)
            _safely(tracker.set_tags, candidate.run_id, {"loopml.registry_version": model.ref,
                                                         "loopml.registry_status": model.status})
            _safely(tracker.log_artifact, candidate.run_id, card)
            _safely(tracker.log_artifact, candidate.run_id, html)
            flush = getattr(tracker, "flush", None)  # optional verb: W&B finishes the run here
            if callable(flush):
                _safely(flush, candidate.run_id)
    checks = {c.name: {"passed": c.passed, "value": c.value, "threshold": c.threshold} for c in report.checks}
    gates = {"checks": checks, "metrics": dict(report.metrics), "baseline": report.baseline, "report": report_key}
    if report.passed:  # a readable copy for tools outside loopml (KServe storageUri, MLflow, a browser)
        try:
            from loopml.exports import export_model

            gates["export"] = export_model(ws, model, report)
        except Exception as exc:
            log.warning("export of %s failed (the loop goes on): %s", model.ref, exc)
    events.announce(ws, events.make_event(ws, events.VALIDATED, model.name, model.version, reason, gates))
    if not report.passed:
        events.announce(ws, events.make_event(ws, events.REJECTED, model.name, model.version, reason, gates))
        return model, None
    policy = cfg.rollout
    if baseline_version is not None and policy.mode != "direct":
        current = production_model(ws, cfg.model_name)
        if current is None or current.version != baseline_version:
            log.warning("not starting a canary of %s: production moved from v%s to %s since validation",
                        model.ref, baseline_version, current.ref if current else "nothing")
            return model, None
        from loopml import canary

        return model, canary.start(ws, model, reason=f"{reason}; {policy.mode} before production moves")
    try:
        event = ws.registry.set_alias(cfg.model_name, PRODUCTION, model.version, expected=baseline_version,
                                      actor=current_actor(), reason=reason, evidence_sha256=report_sha)
    except StaleAliasError as exc:
        log.warning("not promoting %s: %s", model.ref, exc)
        return model, None
    events.announce(ws, events.promotion_event(ws, event, gates), promotion=event)
    return model, event


def model_card(model: ModelVersion, report: GateReport) -> str:
    """A short Markdown card: what the model is, what it was trained on, how it was judged."""
    lines = [f"# {model.ref} ({model.status})", "",
             f"- registered {model.created_at:%Y-%m-%d %H:%M UTC} by {model.created_by}",
             f"- datasets: {', '.join(f'{k} {v}' for k, v in model.lineage.get('datasets', {}).items())}",
             f"- features ({model.lineage.get('feature_view')}): {', '.join(model.lineage.get('features', []))}",
             f"- git commit {model.git_commit}; training run {model.run_id}",
             f"- environment: {', '.join(f'{k} {v}' for k, v in model.environment.items())}", "",
             f"- task: {model.params.get('task', 'binary')}; trainer: {model.params.get('trainer', 'mlp')}", "",
             "## Metrics", "", *(f"- {k}: {v:.4f}" for k, v in model.metrics.items()), "",
             f"## Validation against {report.baseline or 'no production model'}", "",
             "| check | verdict | reason |", "|---|---|---|",
             *(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.reason} |" for c in report.checks)]
    return "\n".join(lines) + "\n"


def _safely(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed (the loop goes on): %s", getattr(fn, "__qualname__", fn), exc)


# ---------------------------------------------------------------------------- serving
def artifact_file(ws: Workspace, model: ModelVersion) -> Path:
    """The model artifact on local disk (downloaded once, verified by sha256)."""
    path = ws.context.home / "cache" / "models" / model.name / f"v{model.version}-{model.artifact_sha256[:12]}.pt"
    if not path.is_file():
        ws.store.download(model.artifact_key, path)
    return path


def wanted_serving(ws: Workspace, name: str) -> tuple[dict[int, float], int | None]:
    """(traffic weights, shadow version) the registry's aliases call for (see :func:`canary.routing_for`)."""
    from loopml import canary

    policy = canary.policy_of(ws)
    return canary.routing_for(ws.registry.aliases(name), mode=policy.mode, canary_weight=policy.canary_weight)


def sync_serving(ws: Workspace, name: str) -> str | None:
    """Make the configured serving backend serve what the aliases say: production, plus the canary
    (a traffic share, or a shadow copy of requests). New versions load before traffic moves and old
    ones leave after it moved, so no request is dropped. Returns the serving URL (None: nothing)."""
    serving = ws.serving
    if hasattr(serving, "use_online_features"):  # requests may name just the entity
        view = view_of(ws)
        serving.use_online_features(lambda ids: ws.feature_store.online_features(view.name, ids))
    weights, shadow = wanted_serving(ws, name)
    if not weights:
        return None
    before = serving.status()
    served = {int(v) for v in before.get("traffic", {})} | {int(v) for v in before.get("versions", [])}
    url = before.get("url")
    for version in [*weights, *([shadow] if shadow is not None else [])]:
        if version not in served:
            model = ws.registry.get(name, version)
            url = serving.deploy(model, artifact_file(ws, model))
    serving.set_traffic(weights)
    set_shadow = getattr(serving, "set_shadow", None)
    if callable(set_shadow):
        set_shadow(shadow)
    elif shadow is not None:
        raise ConfigError(f"serving backend {serving.name!r} cannot mirror requests; use rollout mode 'canary'")
    for version in served - set(weights) - ({shadow} if shadow is not None else set()):
        serving.undeploy(version)
    return url or serving.status().get("url")


# ---------------------------------------------------------------------------- monitoring
@dataclass(frozen=True)
class PredictionWindow:
    """What the serving backend answered since some time: inputs, scores, latencies, versions."""

    inputs: pd.DataFrame
    outputs: tuple[Any, ...]  # score or value; the predicted class for multiclass
    latency_ms: tuple[float, ...]
    versions: tuple[int, ...]
    records: tuple[dict[str, Any], ...] = ()  # the raw log records (entity, request id, time)

    @property
    def span(self) -> tuple[datetime | None, datetime | None]:
        """When the first and the last answered row of the window were logged (UTC)."""
        times = [float(r["ts"]) for r in self.records if isinstance(r.get("ts"), int | float)]
        if not times:
            return None, None
        return (datetime.fromtimestamp(min(times), UTC), datetime.fromtimestamp(max(times), UTC))


def prediction_window(ws: Workspace, model_name: str, since: float | None = None) -> PredictionWindow:
    """Rows the configured serving backend logged since ``since`` (unix seconds).

    With ``since=None`` the window is everything logged after the previous such call: a cursor of
    byte offsets per log segment is kept in ``<home>/monitoring/<model>.log-cursor.json``, so a
    scheduled monitor reads only new rows. A torn last line is left for the next read.
    """
    import pandas as pd

    from loopml.context import shares_state
    from loopml.predlog import LogCursor, read_since

    flush = getattr(ws.serving, "flush_log", None)
    if callable(flush):  # an in-process server writes its log from a background thread
        flush()
    root = Path(ws.serving.prediction_log_dir)
    cursor_file = ws.context.home / "monitoring" / f"{model_name}.log-cursor.json"
    if shares_state(ws):
        records = _records_from_store(ws, model_name, since)
    elif since is None:
        cursor = LogCursor.from_json(cursor_file.read_text()) if cursor_file.is_file() else LogCursor()
        records, moved = read_since(root, model_name, cursor)
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cursor_file.with_suffix(".tmp")
        tmp.write_text(moved.to_json())
        tmp.replace(cursor_file)
    else:
        records, _ = read_since(root, model_name, since=since)
    # What clients were answered: not the shadow copies, not the rows a model failed on; and only
    # records with the fields a window needs (a foreign or hand-edited line is skipped, not fatal).
    answered = [r for r in records if not r.get("shadow") and "error" not in r]
    records = [r for r in answered if _well_formed(r)]
    if len(records) < len(answered):
        log.warning("skipped %d prediction log record(s) of %s without inputs, output or version",
                    len(answered) - len(records), model_name)
    return PredictionWindow(pd.DataFrame([r["inputs"] for r in records]),
                            tuple(r["output"] if isinstance(r["output"], str) else float(r["output"])
                                  for r in records),
                            tuple(float(r.get("latency_ms", 0.0)) for r in records),
                            tuple(int(r["version"]) for r in records), tuple(records))


LOG_HORIZON_DAYS = 7  # uploaded segments older than this are neither read nor remembered by the cursor


def _records_from_store(ws: Workspace, model_name: str, since: float | None) -> list[dict[str, Any]]:
    """Records of uploaded log segments. Without ``since``: the segments no monitor has read yet,
    claimed through a shared cursor in the store (compare-and-set), so two monitors on two machines
    never read the same segment twice and neither misses one."""
    from datetime import timedelta

    from loopml.predlog import SegmentCursor, read_store_segments, segment_day, store_segments
    from loopml.shared_state import SharedState, StateConflictError

    if since is not None:
        return read_store_segments(ws.store, store_segments(ws.store, model_name), since=since)
    horizon = (datetime.now(UTC) - timedelta(days=LOG_HORIZON_DAYS)).strftime("%Y-%m-%d")
    state = SharedState(ws.store, f"monitoring/{model_name}/log-cursor")
    for _ in range(20):
        current = state.read()
        cursor = SegmentCursor.from_value(current.value)
        cursor.forget_before(horizon)
        new = [k for k in store_segments(ws.store, model_name) if k not in cursor and segment_day(k) >= horizon]
        if not new:
            return []
        for key in new:
            cursor.add(key)
        try:
            state.write(current.version, cursor.to_value())
        except StateConflictError:  # another monitor claimed segments first: look again
            continue
        return read_store_segments(ws.store, new)
    raise StateConflictError(f"could not claim prediction log segments of {model_name}: the cursor kept moving")


def _well_formed(record: Mapping[str, Any]) -> bool:
    try:
        int(record["version"])
        output = record["output"]
        if not isinstance(output, str):
            float(output)
        float(record.get("latency_ms", 0.0))
    except (KeyError, TypeError, ValueError):
        return False
    return isinstance(record.get("inputs"), dict)


def observe(ws: Workspace, model_name: str, window: PredictionWindow) -> None:
    """Hand a window of live predictions to every monitor, one call per model version."""
    import numpy as np

    versions = np.asarray(window.versions)
    for version in sorted(set(window.versions)):
        rows = np.flatnonzero(versions == version)
        inputs = window.inputs.iloc[rows].reset_index(drop=True)
        outputs = [window.outputs[i] for i in rows]
        latency = [window.latency_ms[i] for i in rows]
        for monitor in ws.monitors:
            _safely(monitor.observe, model_name, version, inputs, outputs, latency)


def check_drift(ws: Workspace, reference: pd.DataFrame, current: pd.DataFrame, reference_ref: str,
                production_version: int | None = None, now: float | None = None,
                outputs: Sequence[Any] | None = None,
                window: tuple[datetime | None, datetime | None] = (None, None)) -> tuple[DriftReport, str, bool]:
    """Compare live inputs (and, given ``outputs``, the model's answers) with the training reference.

    The output test compares what the model answered live with what it answered on its training
    inputs (score or value: KS; predicted class: chi-square), in the same Holm family as the inputs.
    Stores the HTML report.

    Returns (report, report key, alert). Confirmed drift alerts (hooks, monitors, and the flow's
    Prefect event) at most once per ``drift.cooldown_minutes`` for the same production version, so
    a drifting stream does not start a retrain on every check; a new production version resets it.
    """
    import dataclasses

    from loopml import drift

    cfg = pipeline_config(ws)
    view = view_of(ws)
    numeric, categorical = list(view.numeric), list(view.categorical)
    if (outputs is not None and OUTPUT_COLUMN in reference.columns and len(outputs) == len(current)
            and OUTPUT_COLUMN not in view.features):
        current = current.assign(**{OUTPUT_COLUMN: list(outputs)})
        (categorical if cfg.task == "multiclass" else numeric).append(OUTPUT_COLUMN)
    if len(reference) + len(current) > drift.EXACT_UP_TO and len(current):  # large: on sketches
        from loopml import sketches

        ref_sketch = reference_sketch(ws, numeric, categorical, key=reference.attrs.get("loopml_key"),
                                      frame=reference)
        cur_sketch = sketches.sketch_frame(current, numeric=numeric, categorical=categorical, edges=ref_sketch.edges)
        report = drift.drift_from_sketches(ref_sketch, cur_sketch, alpha=cfg.drift.alpha,
                                           min_samples=cfg.drift.min_samples, model=cfg.model_name,
                                           reference_ref=reference_ref, window=window)
        html = drift.render_html(report, ref_sketch, cur_sketch)
    else:
        report = drift.detect_drift(reference, current, numeric=numeric, categorical=categorical,
                                    alpha=cfg.drift.alpha, min_samples=cfg.drift.min_samples,
                                    model=cfg.model_name, reference_ref=reference_ref, window=window)
        html = drift.render_html(report, reference, current) if len(current) else "<p>no data</p>"
    key = f"reports/{cfg.model_name}/drift/drift-{_stamp()}.html"
    ws.store.put(key, html.encode(), metadata={"content-type": "text/html"})
    payload = {"features": list(report.drifted_features), "production_version": production_version, "report": key,
               "rows": len(current), "drifted": report.drift_detected,
               "statistics": {f.feature: {"statistic": f.statistic, "p_adjusted": f.p_adjusted, "drifted": f.drifted}
                              for f in report.features}}
    events.announce(ws, events.make_event(ws, events.DRIFT_CHECKED, cfg.model_name, production_version,
                                          report.reason, payload))
    if not report.drift_detected:
        return report, key, False
    now = time.time() if now is None else now
    cooldown = cfg.drift.cooldown_minutes * 60
    alert_state = _AlertState(ws, cfg.model_name)
    last = alert_state.read()
    if last and last.get("production_version") == production_version and now - last["ts"] < cooldown:
        minutes = (cooldown - (now - last["ts"])) / 60
        report = dataclasses.replace(report, reason=f"{report.reason}; alert suppressed: cooldown for "
                                                    f"{minutes:.0f} more minutes")
        return report, key, False
    if not alert_state.claim({"ts": now, "production_version": production_version, "report": key}):
        report = dataclasses.replace(report, reason=f"{report.reason}; alert suppressed: another monitor "
                                                    "raised it at the same moment")
        return report, key, False
    report = dataclasses.replace(report, html_key=key)
    events.announce(ws, events.make_event(ws, events.DRIFT, cfg.model_name, production_version, report.reason,
                                          payload), drift=report)
    return report, key, True


class _AlertState:
    """The last drift alert of a model: a file under ``<home>/monitoring``, or, when monitors share
    state (``log_to_store``), a compare-and-set state in the store, so of two monitors that see the
    same drift at once exactly one alerts."""

    def __init__(self, ws: Workspace, model_name: str) -> None:
        from loopml.context import shares_state
        from loopml.shared_state import SharedState

        self.file = ws.context.home / "monitoring" / f"{model_name}.last-drift-alert.json"
        self.shared = SharedState(ws.store, f"monitoring/{model_name}/last-drift-alert") if shares_state(ws) else None
        self.version = 0

    def read(self) -> dict[str, Any] | None:
        if self.shared is not None:
            current = self.shared.read()
            self.version = current.version
            return current.value or None
        return json.loads(self.file.read_text()) if self.file.is_file() else None

    def claim(self, value: dict[str, Any]) -> bool:
        if self.shared is not None:
            from loopml.shared_state import StateConflictError

            try:
                self.shared.write(self.version, value)
            except StateConflictError:
                return False
            return True
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")  # replace atomically: a crash never leaves half a file
        tmp.write_text(json.dumps(value))
        tmp.replace(self.file)
        return True


def registered_version_of(ws: Workspace, candidate: Candidate) -> ModelVersion | None:
    """The registry version already holding this exact artifact, if any."""
    for model in ws.registry.list_versions(candidate.model_name):
        if model.artifact_sha256 == candidate.artifact_sha256:
            return model
    return None


@dataclass(frozen=True)
class PipelineResult:
    """What one pass of the pipeline did."""

    model: str  # e.g. churn:v2
    status: str  # approved | rejected | candidate
    promoted: bool
    skipped_training: bool
    report_path: str | None
    failed_checks: tuple[str, ...]
    serving_url: str | None
    canary: str | None = None  # what the canary decided: "promote", "rollback", or "running"
