"""Live performance from labels that arrive after the predictions, and training-serving skew.

**Live performance.** Labels come later (a customer churns weeks after being scored). Each label
row (entity, label time, label) is joined to the latest prediction for that entity made at most
``max_label_delay_hours`` before the label time (or, when the labels carry a ``request_id``
column, to that request). The task's metrics are then computed per model version and per day,
compared with the version's holdout value from the registry, and announced as
``loopml.performance.measured``; a production version worse than its holdout by more than
``[pipeline.monitoring] max_drop`` (with at least ``min_labels`` joined) is
``loopml.performance.degraded``, which triggers retraining like drift.

**Skew.** For served entities, what the server fed the model (logged inputs) is compared with
(a) the point-in-time features at the time of the request, from the offline store: a difference
means the online store lags or computes features differently, and no value at all means the
served features are older than the view's ``ttl_days`` (``stale``); and (b) the features the same
entity had in the training rows: how far serving inputs sit from what the model learned on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml import events, tasks
from loopml.artifacts import Predictor
from loopml.capabilities import LogFlushingServing
from loopml.context import shares_state
from loopml.predlog import read_since, read_store_segments, store_segments
from loopml.reports import figure_png, img, page, table, verdict
from loopml.serving.artifact_cache import artifact_file
from loopml.stages.project import pipeline_config, production_model, view_of
from loopml.stages.project import stamp as stage_stamp
from loopml.training import training_frame

if TYPE_CHECKING:
    import pandas as pd

    from loopml.context import Workspace


@dataclass(frozen=True)
class VersionPerformance:
    version: int
    labels: int
    metrics: Mapping[str, float]
    holdout: float | None  # the primary metric on the holdout at validation
    by_day: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # day -> {metric: value, "labels": n}


@dataclass(frozen=True)
class LivePerformance:
    model: str
    task: str
    primary: str
    versions: tuple[VersionPerformance, ...]
    production_version: int | None
    degraded: bool
    reason: str

    def payload(self) -> dict[str, Any]:
        return {"primary": self.primary, "degraded": self.degraded, "production_version": self.production_version,
                "versions": {str(v.version): {"labels": v.labels, "metrics": dict(v.metrics), "holdout": v.holdout}
                             for v in self.versions}}


def served_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """What clients were answered: no shadow copies, no failed rows."""
    return [r for r in records if not r.get("shadow") and "error" not in r]


def join_labels(records: Sequence[Mapping[str, Any]], labels: pd.DataFrame, *, entity: str, label: str,
                label_timestamp: str, max_delay_hours: float) -> pd.DataFrame:
    """One row per label that found its prediction: entity, label, version, output, probabilities, ts."""
    import pandas as pd

    preds = pd.DataFrame([{"request_id": r.get("request_id"), "entity": r.get("entity"), "ts": r["ts"],
                           "version": int(r["version"]), "output": r.get("output"),
                           "probabilities": r.get("probabilities")} for r in served_records(records)])
    if preds.empty or labels.empty:
        return pd.DataFrame(columns=["entity", "label", "version", "output", "probabilities", "ts"])
    if "request_id" in labels.columns:
        joined = labels.rename(columns={label: "label"}).merge(preds, on="request_id", how="inner")
        return joined[["entity", "label", "version", "output", "probabilities", "ts"]]
    preds = preds[preds["entity"].notna()].copy()
    if preds.empty:
        return pd.DataFrame(columns=["entity", "label", "version", "output", "probabilities", "ts"])
    preds["when"] = pd.to_datetime(preds["ts"], unit="s", utc=True)
    preds["entity"] = preds["entity"].astype(str)
    left = labels[[entity, label_timestamp, label]].rename(columns={entity: "entity", label: "label"}).copy()
    left["entity"] = left["entity"].astype(str)
    left["when"] = pd.to_datetime(left[label_timestamp], utc=True)
    joined = pd.merge_asof(left.sort_values("when"), preds.sort_values("when"), on="when", by="entity",
                           direction="backward", tolerance=pd.Timedelta(hours=max_delay_hours))
    joined = joined[joined["version"].notna()]
    joined["version"] = joined["version"].astype(int)
    return joined[["entity", "label", "version", "output", "probabilities", "ts"]].reset_index(drop=True)


def _scores(task: str, frame: pd.DataFrame) -> np.ndarray:
    if task == "multiclass":
        return np.array(frame["probabilities"].tolist(), dtype=float)
    return frame["output"].astype(float).to_numpy()


def measure(joined: pd.DataFrame, *, task: str, classes: Mapping[int, tuple[str, ...]],
            holdout: Mapping[int, float | None], production_version: int | None, max_drop: float,
            min_labels: int, model: str) -> LivePerformance:
    """The task's metrics per version (and per day) over joined rows; the verdict for production."""
    import pandas as pd

    primary = tasks.primary_metric(task)  # type: ignore[arg-type]
    out = []
    for version, rows in sorted(joined.groupby("version"), key=lambda kv: kv[0]):
        version = int(version)
        y = tasks.encode_label(rows["label"], task, classes.get(version, ()))  # type: ignore[arg-type]
        metrics = _safe_metrics(task, y, _scores(task, rows))
        days: dict[str, dict[str, float]] = {}
        stamp = pd.to_datetime(rows["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
        for day, idx in rows.groupby(stamp.to_numpy()).groups.items():
            part = rows.loc[idx]
            yd = tasks.encode_label(part["label"], task, classes.get(version, ()))  # type: ignore[arg-type]
            days[str(day)] = {**_safe_metrics(task, yd, _scores(task, part)), "labels": float(len(part))}
        out.append(VersionPerformance(version, len(rows), metrics, holdout.get(version), days))
    degraded, reason = False, "no labels joined to predictions of the production version yet"
    prod = next((v for v in out if v.version == production_version), None)
    if prod is not None:
        live = prod.metrics.get(primary.name, float("nan"))
        if prod.labels < min_labels:
            reason = f"{prod.labels} labels joined for v{prod.version}; a verdict needs {min_labels}"
        elif prod.holdout is None or not np.isfinite(live):
            reason = f"v{prod.version}: live {primary.name} {live:.4g} over {prod.labels} labels (no holdout value)"
        else:
            drop = -primary.better(live, prod.holdout)
            degraded = drop > max_drop
            reason = (f"v{prod.version}: live {primary.name} {live:.4f} over {prod.labels} labels vs holdout "
                      f"{prod.holdout:.4f} ({'worse' if drop > 0 else 'better'} by {abs(drop):.4f}; "
                      f"allowed drop {max_drop:g})")
    return LivePerformance(model, task, primary.name, tuple(out), production_version, degraded, reason)


def _safe_metrics(task: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    out = {}
    for m in tasks.METRICS[task]:  # type: ignore[index]
        try:
            out[m.name] = float(m.compute(y, scores))
        except (ValueError, ZeroDivisionError, IndexError):  # e.g. AUC over one class
            out[m.name] = float("nan")
    return out


def live_performance(ws: Workspace, labels: pd.DataFrame | None = None, *,
                     since: float | None = None) -> tuple[LivePerformance, str]:
    """Join delayed labels to the prediction log, measure per version, store the report, announce.

    ``labels`` defaults to the latest version of ``[pipeline.monitoring] labels_dataset`` (else the
    pipeline's labels dataset). Returns (result, report key)."""
    cfg = pipeline_config(ws)
    mon = cfg.monitoring
    if labels is None:
        name = mon.labels_dataset or cfg.labels_dataset
        labels = ws.datasets.load(ws.datasets.get(name))
    flushing = ws.ability(ws.serving, LogFlushingServing)
    if flushing is not None:
        flushing.flush_log()
    if shares_state(ws):  # every replica's answers, from the store
        records = read_store_segments(ws.store, store_segments(ws.store, cfg.model_name), since=since or 0.0)
    else:
        records, _ = read_since(ws.serving.prediction_log_dir, cfg.model_name, since=since or 0.0)
    joined = join_labels(records, labels, entity=cfg.entity, label=cfg.label, label_timestamp=cfg.label_timestamp,
                         max_delay_hours=mon.max_label_delay_hours)
    primary = tasks.primary_metric(cfg.task).name
    classes, holdout = {}, {}
    for version in sorted(set(joined["version"].tolist())):
        mv = ws.registry.get(cfg.model_name, int(version))
        holdout[int(version)] = mv.metrics.get(f"holdout_{primary}")
        if cfg.task == "multiclass":
            classes[int(version)] = Predictor.from_bytes(artifact_file(ws, mv).read_bytes()).signature.classes
    production = production_model(ws, cfg.model_name)
    result = measure(joined, task=cfg.task, classes=classes, holdout=holdout,
                     production_version=production.version if production else None, max_drop=mon.max_drop,
                     min_labels=mon.min_labels, model=cfg.model_name)
    key = f"reports/{cfg.model_name}/performance/performance-{stage_stamp()}.html"
    ws.store.put(key, render_html(result).encode(), metadata={"content-type": "text/html"})
    payload = {**result.payload(), "report": key}
    version = production.version if production else None
    events.announce(ws, events.make_event(ws, events.PERFORMANCE, cfg.model_name, version, result.reason, payload))
    if result.degraded:
        events.announce(ws, events.make_event(ws, events.DEGRADED, cfg.model_name, version, result.reason, payload))
    return result, key


def render_html(result: LivePerformance) -> str:
    def over_time(ax: Any) -> None:
        for v in result.versions:
            days = sorted(v.by_day)
            ax.plot(days, [v.by_day[d].get(result.primary, float("nan")) for d in days], marker="o",
                    label=f"v{v.version} live")
            if v.holdout is not None:
                ax.axhline(v.holdout, linestyle="--", linewidth=1, color=ax.lines[-1].get_color(),
                           label=f"v{v.version} holdout")
        ax.set_ylabel(result.primary)
        ax.set_title(f"live {result.primary} per version and day")
        if result.versions:
            ax.legend()

    names = [m.name for m in tasks.METRICS[result.task]]  # type: ignore[index]
    rows = [[f"v{v.version}", v.labels, *(v.metrics.get(n) for n in names), v.holdout] for v in result.versions]
    return page(f"Live performance of {result.model}", [
        verdict(f"{'DEGRADED' if result.degraded else 'OK'}: {result.reason}", passed=not result.degraded),
        table(["version", "labels", *names, f"holdout {result.primary}"], rows),
        img(figure_png(over_time, (8, 3.5)), "live metric over time")])


# ---------------------------------------------------------------------------- skew
@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    kind: str  # numeric | categorical
    rows: int
    online_vs_offline: float  # of rows with a point-in-time value at request time: share served differently
    stale: float  # share of rows with no point-in-time value at request time (older than the view's ttl)
    serving_vs_training: float | None  # numeric: standardised mean difference; categorical: share differing
    training_rows: int


def _differs(a: pd.Series, b: pd.Series, numeric: bool) -> np.ndarray:
    if numeric:
        x, y = a.astype(float).to_numpy(), b.astype(float).to_numpy()
        both_nan = np.isnan(x) & np.isnan(y)
        return ~(both_nan | np.isclose(x, y, rtol=1e-6, atol=1e-9))
    return (a.astype(str).to_numpy() != b.astype(str).to_numpy())


def skew(ws: Workspace, records: Sequence[Mapping[str, Any]], training: pd.DataFrame | None = None
         ) -> tuple[FeatureSkew, ...]:
    """Per feature: served inputs vs point-in-time values at request time, and vs the training rows of
    the same entities (``training``: the labels' point-in-time rows; default: built from the labels)."""
    import pandas as pd


    cfg = pipeline_config(ws)
    view = view_of(ws)
    served = [r for r in served_records(records) if r.get("entity") is not None]
    if not served:
        return ()
    latest: dict[str, Mapping[str, Any]] = {}
    for r in served:
        latest[str(r["entity"])] = r
    frame = pd.DataFrame([{"entity_key": k, "request_time": pd.Timestamp(r["ts"], unit="s", tz="UTC"),
                           **{f"served__{f}": r["inputs"].get(f) for f in view.features}}
                          for k, r in latest.items()])
    ids = [latest[k]["entity"] for k in frame["entity_key"]]
    entities = pd.DataFrame({cfg.entity: ids, "request_time": frame["request_time"]})
    offline = ws.feature_store.historical_features(view.name, entities, "request_time", list(view.features))
    offline = (offline.assign(entity_key=offline[cfg.entity].astype(str)).drop_duplicates("entity_key")
               .set_index("entity_key").reindex(frame["entity_key"]).reset_index(drop=True))  # same row order
    if training is None:
        labels = ws.datasets.load(ws.datasets.get(cfg.labels_dataset))
        training = training_frame(labels, ws.feature_store, view, cfg, list(view.features))
    train_by_id = training.assign(entity_key=training[cfg.entity].astype(str)).drop_duplicates(
        "entity_key", keep="last").set_index("entity_key")
    in_training = frame["entity_key"].isin(train_by_id.index).to_numpy()
    out = []
    for feature in view.features:
        numeric = feature in view.numeric
        served_values = frame[f"served__{feature}"].reset_index(drop=True)
        then = offline[feature].reset_index(drop=True)
        fresh = then.notna().to_numpy()
        stale = float(1 - fresh.mean())
        online_vs_offline = (float(_differs(served_values[fresh], then[fresh], numeric).mean())
                             if fresh.any() else 0.0)
        vs_training, n_train = None, int(in_training.sum())
        if n_train:
            trained = train_by_id.loc[frame["entity_key"][in_training], feature].reset_index(drop=True)
            now = served_values[in_training].reset_index(drop=True)
            if numeric:
                spread = float(training[feature].astype(float).std()) or 1.0
                vs_training = float((now.astype(float) - trained.astype(float)).mean() / spread)
            else:
                vs_training = float(_differs(now, trained, False).mean())
        out.append(FeatureSkew(feature, "numeric" if numeric else "categorical", len(frame), online_vs_offline,
                               stale, vs_training, n_train))
    return tuple(out)


def skew_markdown(rows: Sequence[FeatureSkew]) -> str:
    lines = ["| feature | rows | older than the ttl at request | served ≠ point-in-time at request | "
             "serving vs training (same entities) |", "|---|---|---|---|---|"]
    for s in rows:
        vs = "-" if s.serving_vs_training is None else (
            f"{s.serving_vs_training:+.3f} sd" if s.kind == "numeric" else f"{s.serving_vs_training:.1%} differ")
        lines.append(f"| {s.feature} | {s.rows} | {s.stale:.1%} | {s.online_vs_offline:.1%} | {vs} "
                     f"({s.training_rows} entities) |")
    return "\n".join(lines)


def to_json(rows: Sequence[FeatureSkew]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)



