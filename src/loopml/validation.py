"""Validation gates: a candidate against the current production model on the same holdout rows.

Checks, each with a value, a threshold, a verdict and a one-line reason:

* ``auc``: candidate AUC (with a bootstrap confidence interval) at least ``min_auc``.
* ``regression``: paired bootstrap of AUC(candidate) - AUC(production) on the same rows; fails
  only if the upper end of the interval is below ``-regression_margin`` (the candidate is worse
  beyond noise). With no production model yet (first run) it passes and says so.
* ``fairness``: largest AUC gap between slices of the sensitive attribute (slices with fewer than
  ``min_slice_rows`` rows are reported but not gated).
* ``latency``: p99 of single-row predictions, in milliseconds, against the SLO.
* ``servability``: the serving backend loads the artifact and answers a prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml.modeling import Predictor, auc
from loopml.records import GateCheck, GateReport
from loopml.reports import figure_png, img, page, table

if TYPE_CHECKING:
    import pandas as pd

    from loopml.config import GatesConfig


@dataclass(frozen=True)
class Evaluation:
    """Everything measured, for the report."""

    report: GateReport
    candidate_scores: np.ndarray
    baseline_scores: np.ndarray | None
    labels: np.ndarray
    slices: dict[str, dict[str, float]]
    latencies_ms: np.ndarray
    auc_ci: tuple[float, float]
    delta_ci: tuple[float, float] | None


def _bootstrap_auc(y: np.ndarray, a: np.ndarray, b: np.ndarray | None, n: int, conf: float,
                   seed: int = 0) -> tuple[tuple[float, float], tuple[float, float] | None]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n, len(y)))
    auc_a, delta = [], []
    for row in idx:
        ys = y[row]
        if ys.min() == ys.max():
            continue
        va = auc(ys, a[row])
        auc_a.append(va)
        if b is not None:
            delta.append(va - auc(ys, b[row]))
    lo, hi = (1 - conf) / 2 * 100, (1 + conf) / 2 * 100
    ci = (float(np.percentile(auc_a, lo)), float(np.percentile(auc_a, hi)))
    dci = (float(np.percentile(delta, lo)), float(np.percentile(delta, hi))) if b is not None else None
    return ci, dci


def latency_ms(predictor: Predictor, rows: pd.DataFrame, samples: int) -> np.ndarray:
    """Wall time of ``samples`` predictions at batch size 1, after a short warm-up."""
    for i in range(min(10, len(rows))):
        predictor.predict_frame(rows.iloc[[i]])
    out = np.empty(samples)
    for i in range(samples):
        row = rows.iloc[[i % len(rows)]]
        t0 = time.perf_counter()
        predictor.predict_frame(row)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


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
    servability: Callable[[], tuple[bool, str]],
) -> Evaluation:
    y = holdout[label].to_numpy().astype(int)
    cand = candidate.predict_frame(holdout)
    base = baseline.predict_frame(holdout) if baseline is not None else None
    checks: list[GateCheck] = []

    auc_c = auc(y, cand)
    ci, dci = _bootstrap_auc(y, cand, base, gates.bootstrap_samples, gates.confidence)
    checks.append(GateCheck(
        "auc", auc_c, gates.min_auc, auc_c >= gates.min_auc,
        f"AUC {auc_c:.3f} (CI {ci[0]:.3f}-{ci[1]:.3f}) "
        + (">=" if auc_c >= gates.min_auc else "<") + f" minimum {gates.min_auc:.3f}"))

    if base is None:
        checks.append(GateCheck("regression", None, -gates.regression_margin, True,
                                "no production model yet: the first model is judged on absolute gates"))
    else:
        auc_b = auc(y, base)
        assert dci is not None
        worse = dci[1] < -gates.regression_margin
        checks.append(GateCheck(
            "regression", auc_c - auc_b, -gates.regression_margin, not worse,
            f"AUC {auc_c:.3f} vs production {auc_b:.3f} on the same {len(y)} rows: "
            f"difference {auc_c - auc_b:+.3f} (CI {dci[0]:+.3f} to {dci[1]:+.3f}) "
            + ("is worse beyond the noise margin" if worse else "is within or above the noise margin")
            + f" {gates.regression_margin:.3f}"))

    slices: dict[str, dict[str, float]] = {}
    if sensitive:
        for value, idx in holdout.groupby(sensitive, observed=True).indices.items():
            slices[str(value)] = {"rows": float(len(idx)), "auc": auc(y[idx], cand[idx]),
                                  "positive_rate": float((cand[idx] >= 0.5).mean())}
        gated = {k: v for k, v in slices.items() if v["rows"] >= gates.min_slice_rows
                 and not np.isnan(v["auc"])}
        gap = (max(v["auc"] for v in gated.values()) - min(v["auc"] for v in gated.values())
               if len(gated) >= 2 else 0.0)
        detail = ", ".join(f"{k}={v['auc']:.3f} (n={int(v['rows'])})" for k, v in slices.items())
        checks.append(GateCheck("fairness", gap, gates.max_fairness_gap, gap <= gates.max_fairness_gap,
                                f"AUC gap across {sensitive} slices {gap:.3f} "
                                + ("<=" if gap <= gates.max_fairness_gap else ">")
                                + f" {gates.max_fairness_gap:.3f}: {detail}"))

    lat = latency_ms(candidate, holdout, gates.latency_samples)
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    checks.append(GateCheck("latency", p99, gates.latency_p99_ms, p99 <= gates.latency_p99_ms,
                            f"batch-1 latency p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                            + ("<=" if p99 <= gates.latency_p99_ms else ">")
                            + f" SLO {gates.latency_p99_ms:.1f} ms"))

    ok, why = servability()
    checks.append(GateCheck("servability", None, None, ok, why))
    report = GateReport(model_name, candidate_ref, baseline_ref, tuple(checks))
    return Evaluation(report, cand, base, y, slices, lat, ci, dci)


def render_html(ev: Evaluation) -> str:
    """The gate report as a standalone HTML page with ROC, slice and latency plots."""
    r = ev.report
    verdict = ("<p class='verdict pass'>PASSED: candidate may be promoted</p>" if r.passed else
               "<p class='verdict fail'>REJECTED: " + "; ".join(c.name for c in r.failed_checks) + "</p>")
    rows = [(c.name, c.value, c.threshold, c.reason, "pass" if c.passed else "FAIL") for c in r.checks]
    checks_html = table(["check", "value", "threshold", "reason", "verdict"], rows,
                        ["pass" if c.passed else "fail" for c in r.checks])

    def roc(ax: Any) -> None:
        for name, scores in ((r.candidate, ev.candidate_scores),
                             ("production " + str(r.baseline), ev.baseline_scores)):
            if scores is None:
                continue
            order = np.argsort(-scores)
            ys = ev.labels[order]
            tpr = np.cumsum(ys) / max(ys.sum(), 1)
            fpr = np.cumsum(1 - ys) / max((1 - ys).sum(), 1)
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(ev.labels, scores):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on holdout")
        ax.legend(loc="lower right", fontsize=8)

    def slices(ax: Any) -> None:
        names = list(ev.slices)
        ax.bar(names, [ev.slices[n]["auc"] for n in names], color="#4c72b0")
        ax.set(ylim=(0.5, 1.0), ylabel="AUC", title="AUC by slice")

    def latency(ax: Any) -> None:
        ax.hist(ev.latencies_ms, bins=40, color="#55a868")
        ax.axvline(np.percentile(ev.latencies_ms, 99), color="r", ls="--", label="p99")
        ax.set(xlabel="ms per single-row prediction", ylabel="requests", title="Latency")
        ax.legend()

    sections = [verdict, f"<p>candidate <b>{r.candidate}</b> vs production <b>{r.baseline or 'none'}</b>"
                f" on {len(ev.labels)} holdout rows</p>", checks_html, img(figure_png(roc), "ROC")]
    if ev.slices:
        srows = [(k, int(v["rows"]), v["auc"], v["positive_rate"]) for k, v in ev.slices.items()]
        sections += [table(["slice", "rows", "AUC", "predicted positive rate"], srows),
                     img(figure_png(slices), "slices")]
    sections.append(img(figure_png(latency), "latency"))
    return page(f"Validation: {r.model_name} {r.candidate}", sections)
