"""Drift statistics, per feature, vectorised, with family-wise false-alarm control.

* numeric features: two-sample Kolmogorov-Smirnov (sorted arrays + searchsorted, O(n log n));
* categorical features: chi-square test of the category counts (unseen categories pooled);
* the p-values of all features are adjusted with Holm's method, so on same-distribution data the
  chance of *any* alarm in one check is at most ``alpha``;
* fewer than ``min_samples`` current rows: no verdict (``drift_detected`` is False, the reason
  says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from loopml.errors import DataValidationError
from loopml.records import DriftReport, FeatureDrift
from loopml.reports import figure_png, img, page, table

if TYPE_CHECKING:
    import pandas as pd


def ks_two_sample(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """KS statistic and asymptotic p-value of two samples (NaNs dropped)."""
    from scipy.special import kolmogorov

    a = np.sort(reference[~np.isnan(reference)])
    b = np.sort(current[~np.isnan(current)])
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return 0.0, 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / n
    cdf_b = np.searchsorted(b, grid, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = np.sqrt(n * m / (n + m))
    p = float(kolmogorov((en + 0.12 + 0.11 / en) * d))
    return d, min(max(p, 0.0), 1.0)


def chi_square_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square homogeneity test of category frequencies (categories rarer than 5 pooled)."""
    from scipy.stats import chi2

    cats, codes = np.unique(np.concatenate([reference, current]).astype(str), return_inverse=True)
    ref_counts = np.bincount(codes[: len(reference)], minlength=len(cats)).astype(float)
    cur_counts = np.bincount(codes[len(reference):], minlength=len(cats)).astype(float)
    common = (ref_counts + cur_counts) >= 5
    if (~common).any():
        ref_counts = np.append(ref_counts[common], ref_counts[~common].sum())
        cur_counts = np.append(cur_counts[common], cur_counts[~common].sum())
    table_ = np.vstack([ref_counts, cur_counts])
    table_ = table_[:, table_.sum(axis=0) > 0]
    if table_.shape[1] < 2:
        return 0.0, 1.0
    expected = table_.sum(axis=1, keepdims=True) * table_.sum(axis=0, keepdims=True) / table_.sum()
    stat = float(((table_ - expected) ** 2 / expected).sum())
    dof = table_.shape[1] - 1
    return stat, float(chi2.sf(stat, dof))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    alpha: float,
    min_samples: int,
    model: str = "",
    reference_ref: str = "",
    window: tuple[datetime | None, datetime | None] = (None, None),
) -> DriftReport:
    n_cur, n_ref = len(current), len(reference)
    missing = [c for c in (*numeric, *categorical) if c not in current.columns]
    if missing and n_cur:
        raise DataValidationError(f"current window lacks feature column(s) {missing}", column=missing[0])
    if not n_cur:  # nothing observed yet: no statistics, no verdict
        return DriftReport(model, reference_ref, window[0], window[1], (), False,
                           f"only 0 current rows; at least {min_samples} are needed for a verdict")
    results: list[tuple[str, str, float, float]] = []
    for col in numeric:
        stat, p = ks_two_sample(reference[col].to_numpy(dtype=float, na_value=np.nan),
                                current[col].to_numpy(dtype=float, na_value=np.nan))
        results.append((col, "numeric", stat, p))
    for col in categorical:
        stat, p = chi_square_counts(reference[col].astype(str).to_numpy(),
                                    current[col].astype(str).to_numpy())
        results.append((col, "categorical", stat, p))
    adjusted = holm([r[3] for r in results]) if results else np.array([])
    enough = n_cur >= min_samples
    features = tuple(
        FeatureDrift(name, kind, stat, p, float(adj), bool(enough and adj < alpha), n_ref, n_cur)  # type: ignore[arg-type]
        for (name, kind, stat, p), adj in zip(results, adjusted, strict=True))
    drifted = [f.feature for f in features if f.drifted]
    if not enough:
        reason = f"only {n_cur} current rows; at least {min_samples} are needed for a verdict"
    elif drifted:
        reason = f"drift in {', '.join(drifted)} (Holm-adjusted p < {alpha})"
    else:
        reason = f"no feature drifted at family-wise alpha {alpha} over {n_cur} rows"
    return DriftReport(model, reference_ref, window[0], window[1], features, bool(drifted), reason)


def render_html(report: DriftReport, reference: pd.DataFrame, current: pd.DataFrame) -> str:
    verdict = (f"<p class='verdict fail'>DRIFT: {report.reason}</p>" if report.drift_detected
               else f"<p class='verdict pass'>{report.reason}</p>")
    rows = [(f.feature, f.kind, f.statistic, f.p_value, f.p_adjusted, "DRIFT" if f.drifted else "ok")
            for f in report.features]
    sections = [verdict, f"<p>model {report.model}; reference {report.reference}; "
                f"window {report.window_start} to {report.window_end}</p>",
                table(["feature", "test", "statistic", "p", "Holm p", "verdict"], rows,
                      ["fail" if f.drifted else "pass" for f in report.features])]
    for f in report.features:
        def draw(ax, f=f):
            if f.kind == "numeric":
                ref = reference[f.feature].dropna().to_numpy(dtype=float)
                cur = current[f.feature].dropna().to_numpy(dtype=float)
                bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
                ax.hist(ref, bins=bins, alpha=0.5, density=True, label="reference")
                ax.hist(cur, bins=bins, alpha=0.5, density=True, label="current")
            else:
                ref = reference[f.feature].astype(str).value_counts(normalize=True)
                cur = current[f.feature].astype(str).value_counts(normalize=True)
                cats = sorted(set(ref.index) | set(cur.index))
                x = np.arange(len(cats))
                ax.bar(x - 0.2, [ref.get(c, 0) for c in cats], 0.4, label="reference")
                ax.bar(x + 0.2, [cur.get(c, 0) for c in cats], 0.4, label="current")
                ax.set_xticks(x, cats)
            ax.set_title(f"{f.feature} ({'DRIFT' if f.drifted else 'ok'})")
            ax.legend()
        sections.append(img(figure_png(draw, (5, 2.8)), f.feature))
    return page(f"Drift: {report.model}", sections)
