"""Fairness gates over slices of the sensitive attribute.

For every task, ``fairness``: the largest gap of the primary metric between slices. For binary
tasks two more, because a model can rank every group equally well and still treat them unequally:

* ``selection-rate``: the smallest slice's predicted-positive rate over the largest (fairlearn's
  ``demographic_parity_ratio``; the "four-fifths rule" of US employment law is a ratio of 0.8);
* ``error-rate-gap``: the larger of the false-positive-rate gap and the false-negative-rate gap
  between slices (fairlearn's ``equalized_odds_difference``).

Slices smaller than ``min_slice_rows`` are reported, not gated. Scores at or above 0.5 count as
positive, as in serving. A ratio of 0 or a gap of 1 turns its check off (it always passes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from loopml import tasks
from loopml.records import GateCheck

if TYPE_CHECKING:
    import pandas as pd

    from loopml.config import GatesConfig
    from loopml.tasks import TaskKind


def _rate(hits: np.ndarray) -> float:
    return float(hits.mean()) if len(hits) else float("nan")


def slices(task: TaskKind, primary: tasks.Metric, holdout: pd.DataFrame, sensitive: str, y: np.ndarray,
           pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Per slice: rows, the primary metric and, for binary tasks, positive, false-positive and
    false-negative rates."""
    out: dict[str, dict[str, float]] = {}
    for value, idx in holdout.groupby(sensitive, observed=True, dropna=False).indices.items():
        entry = {"rows": float(len(idx)), primary.name: primary.compute(y[idx], pred[idx])}
        if task == "binary":
            positive, truth = pred[idx] >= 0.5, y[idx] >= 0.5
            entry["positive_rate"] = _rate(positive)
            entry["false_positive_rate"] = _rate(positive[~truth])
            entry["false_negative_rate"] = _rate(~positive[truth])
        out[f"{sensitive}={value}"] = entry
    return out


def _gated(slices_: Mapping[str, Mapping[str, float]], key: str, gates: GatesConfig) -> dict[str, float]:
    return {k: v[key] for k, v in slices_.items()
            if v["rows"] >= gates.min_slice_rows and key in v and not np.isnan(v[key])}


def _detail(slices_: Mapping[str, Mapping[str, float]], key: str) -> str:
    return ", ".join(f"{k}: {v[key]:.3f} (n={int(v['rows'])})" for k, v in slices_.items() if key in v)


DEFAULT_GAP = 0.10  # binary and multiclass: AUC points


def _metric_gap(task: TaskKind, name: str, values: Mapping[str, float], overall: float | None,
                gates: GatesConfig, sensitive: str, detail: str) -> GateCheck:
    """The primary metric's gap between slices: in the metric's units, or (regression by default) as
    a share of the metric on the whole holdout, which fits any target's scale."""
    gap = max(values.values()) - min(values.values()) if len(values) >= 2 else 0.0
    if gates.max_fairness_gap is None and task == "regression":
        share = gap / overall if overall and overall > 0 else 0.0
        ok = share <= gates.max_relative_fairness_gap
        return GateCheck("fairness", share, gates.max_relative_fairness_gap, ok,
                         f"{name} gap across {sensitive} slices {gap:.4g} = {share:.1%} of the holdout's {name} "
                         f"{overall or 0:.4g} " + ("<=" if ok else ">") + f" {gates.max_relative_fairness_gap:.0%}: "
                         + detail)
    bound = DEFAULT_GAP if gates.max_fairness_gap is None else gates.max_fairness_gap
    ok = gap <= bound
    return GateCheck("fairness", gap, bound, ok, f"{name} gap across {sensitive} slices {gap:.3f} "
                     + ("<=" if ok else ">") + f" {bound:.3f}: {detail}")


def checks(task: TaskKind, primary: tasks.Metric, slices_: Mapping[str, Mapping[str, float]], sensitive: str,
           gates: GatesConfig, overall: float | None = None) -> list[GateCheck]:
    name = primary.name
    out = [_metric_gap(task, name, _gated(slices_, name, gates), overall, gates, sensitive, _detail(slices_, name))]
    if task != "binary":
        return out
    if gates.min_selection_rate_ratio is not None:
        rates = _gated(slices_, "positive_rate", gates)
        top = max(rates.values(), default=0.0)
        ratio = min(rates.values()) / top if len(rates) >= 2 and top > 0 else 1.0
        ok = ratio >= gates.min_selection_rate_ratio
        out.append(GateCheck("selection-rate", ratio, gates.min_selection_rate_ratio, ok,
                             f"lowest predicted-positive rate over the highest across {sensitive} slices {ratio:.3f} "
                             + (">=" if ok else "<") + f" {gates.min_selection_rate_ratio:.3f}: "
                             + _detail(slices_, "positive_rate")))
    if gates.max_error_rate_gap is not None:
        gaps = {}
        for key in ("false_positive_rate", "false_negative_rate"):
            rates = _gated(slices_, key, gates)
            gaps[key] = max(rates.values()) - min(rates.values()) if len(rates) >= 2 else 0.0
        worst = max(gaps, key=lambda k: gaps[k])
        ok = gaps[worst] <= gates.max_error_rate_gap
        out.append(GateCheck("error-rate-gap", gaps[worst], gates.max_error_rate_gap, ok,
                             f"false-positive rate gap {gaps['false_positive_rate']:.3f}, false-negative rate gap "
                             f"{gaps['false_negative_rate']:.3f} across {sensitive} slices: the larger "
                             + ("<=" if ok else ">") + f" {gates.max_error_rate_gap:.3f}; "
                             + _detail(slices_, worst).replace(": ", f" {worst.replace('_', ' ')}: ", 1)))
    return out
