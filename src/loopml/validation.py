"""Validation gates: a candidate against the current production model on the same holdout rows.

Every check has a value, a threshold, a verdict and a one-line reason. Metrics follow the task
(:mod:`loopml.tasks`); the first metric of a task is its *primary* metric.

* ``holdout``: the holdout can judge the task (rows, and both classes for a classifier).
* one check per ``gates.thresholds`` entry (``auc``, ``rmse``, ...): bound in the metric's
  direction; the primary metric's reason carries its bootstrap confidence interval.
* ``regression``: paired bootstrap of primary(candidate) - primary(production) on the same rows,
  signed so that positive is better; fails only if the whole interval is below
  ``-regression_margin``. With no production model yet it passes and says so.
* ``fairness``: largest gap of the primary metric between slices of the sensitive attribute
  (slices smaller than ``min_slice_rows`` are reported, not gated); for binary tasks also
  ``selection-rate`` and ``error-rate-gap`` (:mod:`loopml.fairness`).
* ``latency``: absolute p99 of batch-1 predictions against the SLO, on this machine.
* ``latency-ratio``: candidate and production measured interleaved on the same rows, so a busy
  machine slows both alike; gates the ratio of their medians.
* ``servability``: the serving backend loads the artifact and answers.
* checks from plugins (``loopml_gate_checks``) that the project turned on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml import fairness, tasks
from loopml.artifacts import Predictor
from loopml.importance import permutation_importance
from loopml.records import GateCheck, GateReport
from loopml.reports import figure_png, img, page, paragraph, strong, table, verdict

if TYPE_CHECKING:
    import pandas as pd

    from loopml.config import GatesConfig
    from loopml.tasks import TaskKind


@dataclass(frozen=True)
class GateContext:
    """What a gate check from a plugin sees. Arrays are aligned with ``holdout`` rows."""

    model_name: str
    task: TaskKind
    classes: tuple[str, ...]
    labels: np.ndarray  # encoded: 0/1, class index, or float
    candidate: np.ndarray  # predictions, task-shaped (see loopml.tasks)
    baseline: np.ndarray | None
    holdout: pd.DataFrame
    metrics: Mapping[str, float]
    baseline_metrics: Mapping[str, float] | None
    slices: Mapping[str, Mapping[str, float]]
    sensitive: str | None


@dataclass(frozen=True)
class Evaluation:
    """Everything measured, for the report."""

    report: GateReport
    task: TaskKind
    classes: tuple[str, ...]
    candidate_scores: np.ndarray
    baseline_scores: np.ndarray | None
    labels: np.ndarray
    slices: dict[str, dict[str, float]]
    latencies_ms: np.ndarray
    baseline_latencies_ms: np.ndarray | None
    metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    metric_ci: tuple[float, float] | None
    delta_ci: tuple[float, float] | None

    @property
    def primary(self) -> str:
        return tasks.primary_metric(self.task).name


def paired_bootstrap(metric: tasks.Metric, y: np.ndarray, a: np.ndarray, b: np.ndarray | None, n: int,
                     conf: float, seed: int = 0) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Bootstrap CI of ``metric(a)`` and of how much ``a`` beats ``b`` on the same resampled rows."""
    rng = np.random.default_rng(seed)
    values, deltas = [], []
    for row in rng.integers(0, len(y), size=(n, len(y))):
        va = metric.compute(y[row], a[row])
        if np.isnan(va):
            continue
        values.append(va)
        if b is not None:
            vb = metric.compute(y[row], b[row])
            if not np.isnan(vb):
                deltas.append(metric.better(va, vb))
    lo, hi = (1 - conf) / 2 * 100, (1 + conf) / 2 * 100
    ci = (float(np.percentile(values, lo)), float(np.percentile(values, hi))) if values else None
    dci = (float(np.percentile(deltas, lo)), float(np.percentile(deltas, hi))) if deltas else None
    return ci, dci


def latency_ms(predictor: Predictor, rows: Sequence[Mapping[str, Any]], samples: int,
               other: Predictor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Batch-1 wall times in ms; with ``other``, both measured interleaved on the same rows."""
    for i in range(min(10, len(rows))):
        predictor.predict_rows(rows[i:i + 1])
        if other is not None:
            other.predict_rows(rows[i:i + 1])
    out = np.empty(samples)
    out_other = np.empty(samples) if other is not None else None
    for i in range(samples):
        row = rows[i % len(rows): i % len(rows) + 1]
        order = (predictor, other) if i % 2 == 0 else (other, predictor)  # neither always goes first
        for model in order:
            if model is None:
                continue
            t0 = time.perf_counter()
            model.predict_rows(row)
            elapsed = (time.perf_counter() - t0) * 1000
            if model is predictor:
                out[i] = elapsed
            else:
                out_other[i] = elapsed  # type: ignore[index]
    return out, out_other


def _fmt(name: str, value: float) -> str:
    return f"{name} {value:.3f}" if abs(value) < 1000 else f"{name} {value:.4g}"


def evaluate(
    *,
    model_name: str,
    candidate_ref: str,
    candidate: Predictor,
    baseline_ref: str | None,
    baseline: Predictor | None,
    holdout: pd.DataFrame,
    label: str,
    sensitive: str | None,
    gates: GatesConfig,
    thresholds: Mapping[str, float],
    servability: Callable[[], tuple[bool, str]],
    extra_checks: Sequence[tuple[str, Callable[[GateContext], GateCheck]]] = (),
) -> Evaluation:
    sig = candidate.signature
    task, classes = sig.task, sig.classes
    primary = tasks.primary_metric(task)
    y = tasks.encode_label(holdout[label], task, classes) if len(holdout) else np.array([])
    cand = candidate.predict_frame(holdout) if len(holdout) else np.array([])
    base = baseline.predict_frame(holdout) if baseline is not None and len(holdout) else None
    if base is not None and baseline is not None and baseline.signature.task != task:
        base = None  # a production model of another task cannot be compared
    checks: list[GateCheck] = []

    judgeable, why = _holdout_can_judge(task, y, classes)
    checks.append(GateCheck("holdout", float(len(y)), None, judgeable, why))
    metrics = tasks.evaluate_all(task, y, cand) if judgeable else {}
    base_metrics = tasks.evaluate_all(task, y, base) if judgeable and base is not None else None
    ci = dci = None
    slices: dict[str, dict[str, float]] = {}
    if judgeable:
        ci, dci = paired_bootstrap(primary, y, cand, base, gates.bootstrap_samples, gates.confidence)
        for name, bound in thresholds.items():
            m = tasks.metric(task, name)
            value = metrics[name]
            ok = bool(value >= bound if m.higher_is_better else value <= bound)
            ci_text = f" (CI {ci[0]:.3f}-{ci[1]:.3f})" if name == primary.name and ci else ""
            relation = (">=" if ok else "<") if m.higher_is_better else ("<=" if ok else ">")
            checks.append(GateCheck(name, value, bound, ok, f"{_fmt(name, value)}{ci_text} {relation} "
                                    f"{'minimum' if m.higher_is_better else 'maximum'} {bound:.4g}"))
        checks.append(_regression_check(primary, metrics, base_metrics, dci, len(y), gates.regression_margin))
        if sensitive:
            slices = fairness.slices(task, primary, holdout, sensitive, y, cand)
            checks += fairness.checks(task, primary, slices, sensitive, gates, overall=metrics.get(primary.name))

    rows = holdout[list(sig.features)].head(max(gates.latency_samples, 1)).to_dict("records")
    lat, base_lat = (latency_ms(candidate, rows, gates.latency_samples, baseline) if rows
                     else (np.zeros(1), None))
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    checks.append(GateCheck("latency", p99, gates.latency_p99_ms, p99 <= gates.latency_p99_ms,
                            f"batch-1 latency p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                            + ("<=" if p99 <= gates.latency_p99_ms else ">")
                            + f" SLO {gates.latency_p99_ms:.1f} ms (absolute, on this machine)"))
    if base_lat is None:
        checks.append(GateCheck("latency-ratio", None, gates.max_latency_ratio, True,
                                "no production model to compare latency with"))
    else:
        ratio = p50 / max(float(np.percentile(base_lat, 50)), 1e-9)
        checks.append(GateCheck(
            "latency-ratio", ratio, gates.max_latency_ratio, ratio <= gates.max_latency_ratio,
            f"median batch-1 latency {p50:.2f} ms vs production {np.percentile(base_lat, 50):.2f} ms, "
            f"measured interleaved: ratio {ratio:.2f} " + ("<=" if ratio <= gates.max_latency_ratio else ">")
            + f" {gates.max_latency_ratio:.2f}"))

    ok, why = servability()
    checks.append(GateCheck("servability", None, None, ok, why))

    if extra_checks:
        ctx = GateContext(model_name, task, classes, y, cand, base, holdout, metrics, base_metrics, slices,
                          sensitive)
        for name, check in extra_checks:
            try:
                result = check(ctx)
                if not isinstance(result, GateCheck):
                    raise TypeError(f"returned {type(result).__name__}, not a GateCheck")
                checks.append(result)
            except Exception as exc:  # a broken check fails its gate, it does not pass silently
                checks.append(GateCheck(name, None, None, False, f"check failed to run: {type(exc).__name__}: {exc}"))

    importance = permutation_importance(candidate, holdout, y) if judgeable else {}
    report = GateReport(model_name, candidate_ref, baseline_ref, tuple(checks), metrics=dict(metrics),
                        importance=importance)
    return Evaluation(report, task, classes, cand, base, y, slices, lat, base_lat, metrics, base_metrics, ci, dci)


def _holdout_can_judge(task: TaskKind, y: np.ndarray, classes: tuple[str, ...]) -> tuple[bool, str]:
    if len(y) == 0:
        return False, ("the holdout has no rows: widen holdout.fraction or move holdout.after earlier, "
                       "and check that labels have features known at their timestamp")
    if task in ("binary", "multiclass"):
        present = sorted({classes[int(v)] if task == "multiclass" else str(int(v)) for v in np.unique(y)})
        if len(present) < 2:
            return False, (f"the holdout's {len(y)} rows all have class {present[0]}: "
                           f"{tasks.primary_metric(task).name} is undefined; widen the holdout or check the label")
        return True, f"{len(y)} rows, classes {', '.join(present)}"
    if len(y) < 2:
        return False, f"the holdout has {len(y)} row: too few to judge a regression"
    return True, f"{len(y)} rows"


def _regression_check(primary: tasks.Metric, metrics: Mapping[str, float], base_metrics: Mapping[str, float] | None,
                      dci: tuple[float, float] | None, n: int, margin: float) -> GateCheck:
    name = primary.name
    if base_metrics is None:
        return GateCheck("regression", None, -margin, True,
                         "no production model yet: the first model is judged on absolute gates")
    a, b = metrics[name], base_metrics[name]
    if dci is None:
        return GateCheck("regression", None, -margin, False, f"{name} could not be bootstrapped on {n} rows")
    worse = dci[1] < -margin
    gain = primary.better(a, b)
    return GateCheck(
        "regression", gain, -margin, not worse,
        f"{name} {a:.4g} vs production {b:.4g} on the same {n} rows: improvement {gain:+.4g} "
        f"(CI {dci[0]:+.4g} to {dci[1]:+.4g}) "
        + ("is worse beyond the noise margin" if worse else "is within or above the noise margin")
        + f" {margin:.4g}")


# ---------------------------------------------------------------------------- report
def render_html(ev: Evaluation) -> str:
    """The gate report as a standalone HTML page with plots that fit the task."""
    r = ev.report
    summary = verdict("PASSED: candidate may be promoted" if r.passed else
                      "REJECTED: " + "; ".join(c.name for c in r.failed_checks), passed=r.passed)
    rows = [(c.name, c.value, c.threshold, c.reason, "pass" if c.passed else "FAIL") for c in r.checks]
    checks_html = table(["check", "value", "threshold", "reason", "verdict"], rows,
                        ["pass" if c.passed else "fail" for c in r.checks])
    sections = [summary, paragraph(f"{ev.task} model; ", strong(r.candidate), " vs production ",
                                   strong(r.baseline or "none"), f" on {len(ev.labels)} holdout rows"), checks_html]
    if ev.metrics:
        names = list(ev.metrics)
        mrows = [("candidate", *(ev.metrics[n] for n in names))]
        if ev.baseline_metrics:
            mrows.append((f"production {r.baseline}", *(ev.baseline_metrics[n] for n in names)))
        sections.append(table(["model", *names], mrows))
        title, plot = TASK_PLOTS[ev.task]
        sections.append(img(figure_png(lambda ax: plot(ax, ev), (6, 4)), title))
    if ev.slices:
        primary = ev.primary
        srows = [(k, int(v["rows"]), v[primary], v.get("positive_rate")) for k, v in ev.slices.items()]
        sections += [table(["slice", "rows", primary, "predicted positive rate"], srows),
                     img(figure_png(lambda ax: _slice_bars(ax, ev)), "slices")]
    if r.importance:
        sections += [paragraph(strong("What the model relies on: "), f"drop of {ev.primary} on the holdout when "
                               "a feature's values are shuffled across rows (permutation importance)"),
                     img(figure_png(lambda ax: _importance(ax, r.importance)), "permutation importance")]
    sections.append(img(figure_png(lambda ax: _latency(ax, ev)), "latency"))
    return page(f"Validation: {r.model_name} {r.candidate}", sections)


def _importance(ax: Any, importance: Mapping[str, float]) -> None:
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names], color="#4c78a8")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("drop of the primary metric when shuffled")


def _roc(ax: Any, ev: Evaluation) -> None:
    r = ev.report
    for name, scores in ((r.candidate, ev.candidate_scores), (f"production {r.baseline}", ev.baseline_scores)):
        if scores is None:
            continue
        order = np.argsort(-scores)
        ys = ev.labels[order]
        tpr = np.cumsum(ys) / max(ys.sum(), 1)
        fpr = np.cumsum(1 - ys) / max((1 - ys).sum(), 1)
        ax.plot(fpr, tpr, label=f"{name} (AUC {tasks.auc(ev.labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on holdout")
    ax.legend(loc="lower right", fontsize=8)


def _confusion(ax: Any, ev: Evaluation) -> None:
    k = len(ev.classes)
    matrix = np.zeros((k, k), dtype=int)
    for t, p in zip(ev.labels.astype(int), np.argmax(ev.candidate_scores, axis=1), strict=True):
        matrix[t, p] += 1
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(k), ev.classes, rotation=30)
    ax.set_yticks(range(k), ev.classes)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix on holdout (candidate)")


def _residuals(ax: Any, ev: Evaluation) -> None:
    ax.scatter(ev.labels, ev.candidate_scores, s=6, alpha=0.5, label="candidate")
    if ev.baseline_scores is not None:
        ax.scatter(ev.labels, ev.baseline_scores, s=6, alpha=0.3, label=f"production {ev.report.baseline}")
    lo, hi = float(np.min(ev.labels)), float(np.max(ev.labels))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual on holdout (residual = distance "
                                                      "from the diagonal)")
    ax.legend(fontsize=8)


def _slice_bars(ax: Any, ev: Evaluation) -> None:
    names = list(ev.slices)
    ax.bar(names, [ev.slices[n][ev.primary] for n in names], color="#4c72b0")
    ax.set(ylabel=ev.primary, title=f"{ev.primary} by slice")


def _latency(ax: Any, ev: Evaluation) -> None:
    bins = np.histogram_bin_edges(np.concatenate([ev.latencies_ms, ev.baseline_latencies_ms])
                                  if ev.baseline_latencies_ms is not None else ev.latencies_ms, bins=40)
    ax.hist(ev.latencies_ms, bins=bins, alpha=0.6, label="candidate", color="#55a868")
    if ev.baseline_latencies_ms is not None:
        ax.hist(ev.baseline_latencies_ms, bins=bins, alpha=0.5, label="production (interleaved)", color="#4c72b0")
    ax.axvline(np.percentile(ev.latencies_ms, 99), color="r", ls="--", label="candidate p99")
    ax.set(xlabel="ms per single-row prediction", ylabel="requests", title="Latency")
    ax.legend(fontsize=8)


TASK_PLOTS: dict[str, tuple[str, Any]] = {"binary": ("ROC", _roc), "multiclass": ("confusion matrix", _confusion),
                                          "regression": ("predicted vs actual", _residuals)}
