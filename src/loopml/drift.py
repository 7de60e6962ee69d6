"""Drift statistics, per feature, vectorised, with family-wise false-alarm control.

* numeric features: two-sample Kolmogorov-Smirnov (sorted arrays + searchsorted, O(n log n));
* categorical features: chi-square test of the category counts (unseen categories pooled);
* the p-values of all features are adjusted with Holm's method, so on same-distribution data the
  chance of *any* alarm in one check is at most ``alpha``;
* missing values are a signal, the same for both kinds: a categorical feature counts them as the
  category ``(missing)``; a numeric feature adds a chi-square test of its missing rate to the KS
  test of its present values (Bonferroni within the feature), so a column that turns all-NaN drifts;
* ``±inf`` are values like others to KS (they sort at the ends); plots show the finite ones;
* windows larger than ``EXACT_UP_TO`` rows (or partitions merged) are tested on mergeable sketches
  (:mod:`loopml.sketches`): the same tests on exact counts, the KS statistic within a stated bound;
* fewer than ``min_samples`` current rows, or an empty reference: no verdict (``drift_detected`` is
  False, the reason says why).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from loopml import sketches
from loopml.errors import DataValidationError
from loopml.records import DriftReport, FeatureDrift
from loopml.reports import figure_png, img, page, paragraph, strong, table, verdict
from loopml.sketches import MISSING, NumericSketch, WindowSketch

if TYPE_CHECKING:
    import pandas as pd


def ks_two_sample(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """KS statistic and asymptotic p-value of two samples (NaNs dropped)."""
    a = np.sort(reference[~np.isnan(reference)])
    b = np.sort(current[~np.isnan(current)])
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return 0.0, 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / n
    cdf_b = np.searchsorted(b, grid, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    return d, ks_p_value(d, n, m)


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a KS statistic ``d`` between samples of ``n`` and ``m``."""
    from scipy.special import kolmogorov

    if n == 0 or m == 0:
        return 1.0
    en = np.sqrt(n * m / (n + m))
    p = float(kolmogorov((en + 0.12 + 0.11 / en) * d))
    return min(max(p, 0.0), 1.0)


def chi_square_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square homogeneity test of category frequencies (categories rarer than 5 pooled)."""
    cats, codes = np.unique(np.concatenate([reference, current]).astype(str), return_inverse=True)
    return chi_square_table(np.bincount(codes[: len(reference)], minlength=len(cats)),
                            np.bincount(codes[len(reference):], minlength=len(cats)))


def chi_square_table(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """The same test on the counts of each category (aligned arrays)."""
    from scipy.stats import chi2

    ref_counts, cur_counts = np.asarray(reference_counts, float), np.asarray(current_counts, float)
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


PLOT_CATEGORIES = 20  # the report's bar charts show this many categories, the rest as one bar


def categories(values: pd.Series) -> np.ndarray:
    """Category labels as strings, every kind of missing (None, NaN, NA) as ``(missing)``."""
    labels = values.astype("object").astype(str).to_numpy()
    labels[values.isna().to_numpy()] = MISSING
    return labels


def missing_rate_test(missing_ref: int, n_ref: int, missing_cur: int, n_cur: int) -> float:
    """p-value of "both windows have the same missing rate" (2x2 chi-square)."""
    from scipy.stats import chi2

    table_ = np.array([[missing_ref, n_ref - missing_ref], [missing_cur, n_cur - missing_cur]], dtype=float)
    if n_ref == 0 or n_cur == 0 or (table_.sum(axis=0) == 0).any():
        return 1.0  # nothing to compare: one window is empty, or both are all-missing / none-missing
    expected = table_.sum(axis=1, keepdims=True) * table_.sum(axis=0, keepdims=True) / table_.sum()
    return float(chi2.sf(float(((table_ - expected) ** 2 / expected).sum()), 1))


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


EXACT_UP_TO = 200_000  # rows in both windows together; larger checks run on sketches


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
    reference_sketch: WindowSketch | None = None,
    exact_up_to: int = EXACT_UP_TO,
) -> DriftReport:
    """Drift of ``current`` against ``reference``, feature by feature, Holm-corrected.

    Up to ``exact_up_to`` rows in both windows the tests run on the raw values. Above it (or with
    an empty ``reference`` frame and a stored ``reference_sketch``) both windows are sketched
    (:mod:`loopml.sketches`) and the same tests run on the sketches: categorical and missing-value
    tests are identical, and each KS statistic comes with its ``statistic_error`` bound (about 1/4,096 at most)."""
    n_cur, n_ref = len(current), len(reference)
    missing = [c for c in (*numeric, *categorical) if c not in current.columns]
    if missing and n_cur:
        raise DataValidationError(f"current window lacks feature column(s) {missing}", column=missing[0])
    if n_ref and n_ref + n_cur <= exact_up_to:  # small enough: raw values (a given sketch is not needed)
        reference_sketch = current_sketch = None
    else:
        if reference_sketch is None:
            reference_sketch = sketches.sketch_frame(reference, numeric=numeric, categorical=categorical)
        current_sketch = (sketches.sketch_frame(current, numeric=numeric, categorical=categorical,
                                                edges=reference_sketch.edges) if n_cur else None)
    if reference_sketch is not None and current_sketch is not None:
        return drift_from_sketches(reference_sketch, current_sketch, alpha=alpha, min_samples=min_samples,
                                   model=model, reference_ref=reference_ref, window=window)
    verdict = _no_verdict(n_ref, n_cur, min_samples, model, reference_ref, window)
    if verdict is not None:
        return verdict
    results: list[_Result] = []
    for col in numeric:
        ref = reference[col].to_numpy(dtype=float, na_value=np.nan)
        cur = current[col].to_numpy(dtype=float, na_value=np.nan)
        stat, p = ks_two_sample(ref, cur)
        miss_ref, miss_cur = int(np.isnan(ref).sum()), int(np.isnan(cur).sum())
        results.append(_numeric_result(col, stat, 0.0, p, miss_ref, n_ref, miss_cur, n_cur))
    for col in categorical:
        results.append(_categorical_result(col, sketches.sketch_categorical(reference[col]).counts,
                                           sketches.sketch_categorical(current[col]).counts))
    return _verdict(results, n_ref, n_cur, alpha=alpha, min_samples=min_samples, model=model,
                    reference_ref=reference_ref, window=window)


def drift_from_sketches(reference: WindowSketch, current: WindowSketch, *, alpha: float, min_samples: int,
                        model: str = "", reference_ref: str = "",
                        window: tuple[datetime | None, datetime | None] = (None, None)) -> DriftReport:
    """The drift verdict from two sketches (the current one built with the reference's edges, and
    possibly merged from many partitions)."""
    n_ref, n_cur = reference.rows, current.rows
    verdict = _no_verdict(n_ref, n_cur, min_samples, model, reference_ref, window)
    if verdict is not None:
        return verdict
    results: list[_Result] = []
    for col, ref in reference.numeric.items():
        if col not in current.numeric:
            raise DataValidationError(f"current window lacks feature column(s) [{col!r}]", column=col)
        cur = current.numeric[col]
        stat, error = sketches.ks_statistic(ref, cur)
        results.append(_numeric_result(col, stat, error, ks_p_value(stat, ref.present, cur.present),
                                       ref.missing, n_ref, cur.missing, n_cur))
    for col, ref_counts in reference.categorical.items():
        if col not in current.categorical:
            raise DataValidationError(f"current window lacks feature column(s) [{col!r}]", column=col)
        results.append(_categorical_result(col, ref_counts.counts, current.categorical[col].counts))
    return _verdict(results, n_ref, n_cur, alpha=alpha, min_samples=min_samples, model=model,
                    reference_ref=reference_ref, window=window)


# (feature, kind, statistic, statistic error bound, p, missing share in reference, in current)
_Result = tuple[str, str, float, float, float, float, float]


def _numeric_result(col: str, stat: float, error: float, p: float, miss_ref: int, n_ref: int,
                    miss_cur: int, n_cur: int) -> _Result:
    if miss_ref or miss_cur:  # two tests of one feature: Bonferroni within it
        p = min(1.0, 2 * min(p, missing_rate_test(miss_ref, n_ref, miss_cur, n_cur)))
    return col, "numeric", stat, error, p, miss_ref / n_ref, miss_cur / n_cur


def _categorical_result(col: str, ref: Mapping[str, int], cur: Mapping[str, int]) -> _Result:
    labels = sorted({*ref, *cur})
    ref_counts = np.array([ref.get(label, 0) for label in labels])
    cur_counts = np.array([cur.get(label, 0) for label in labels])
    stat, p = chi_square_table(ref_counts, cur_counts)
    n_ref, n_cur = max(int(ref_counts.sum()), 1), max(int(cur_counts.sum()), 1)
    return col, "categorical", stat, 0.0, p, ref.get(MISSING, 0) / n_ref, cur.get(MISSING, 0) / n_cur


def _no_verdict(n_ref: int, n_cur: int, min_samples: int, model: str, reference_ref: str,
                window: tuple[datetime | None, datetime | None]) -> DriftReport | None:
    if not n_cur:  # nothing observed yet: no statistics, no verdict
        return DriftReport(model, reference_ref, window[0], window[1], (), False,
                           f"only 0 current rows; at least {min_samples} are needed for a verdict")
    if not n_ref:
        return DriftReport(model, reference_ref, window[0], window[1], (), False,
                           "the reference has 0 rows, so there is nothing to compare with: no verdict. "
                           "Check the data the model was trained on")
    return None


def _verdict(results: list[_Result], n_ref: int, n_cur: int, *, alpha: float, min_samples: int, model: str,
             reference_ref: str, window: tuple[datetime | None, datetime | None]) -> DriftReport:
    adjusted = holm([r[4] for r in results]) if results else np.array([])
    enough = n_cur >= min_samples
    features = tuple(
        FeatureDrift(name, kind, stat, p, float(adj), bool(enough and adj < alpha), n_ref, n_cur,  # type: ignore[arg-type]
                     missing_ref, missing_cur, error)
        for (name, kind, stat, error, p, missing_ref, missing_cur), adj in zip(results, adjusted, strict=True))
    drifted = [f.feature for f in features if f.drifted]
    if not enough:
        reason = f"only {n_cur} current rows; at least {min_samples} are needed for a verdict"
    elif drifted:
        reason = f"drift in {', '.join(drifted)} (Holm-adjusted p < {alpha})"
    else:
        reason = f"no feature drifted at family-wise alpha {alpha} over {n_cur} rows"
    return DriftReport(model, reference_ref, window[0], window[1], features, bool(drifted), reason)


def with_importance(report: DriftReport, importance: Mapping[str, float]) -> DriftReport:
    """The report with the model's permutation importance: drifted features ranked by how much the
    model relies on them, so a drifted feature the model ignores is told apart from one it leans on."""
    if not importance:
        return report
    drifted = sorted(report.drifted_features, key=lambda f: -importance.get(f, float("-inf")))
    reason = report.reason
    if drifted and report.drift_detected:
        ranked = ", ".join(f"{f} (importance {importance[f]:.3f})" if f in importance else f for f in drifted)
        reason = reason.replace(", ".join(report.drifted_features), ranked, 1)
    return dataclasses.replace(report, reason=reason, importance=dict(importance))


def render_html(report: DriftReport, reference: pd.DataFrame | WindowSketch,
                current: pd.DataFrame | WindowSketch) -> str:
    """The drift report page, from the two windows' rows or from their sketches (large windows:
    numeric features are then drawn as densities over the reference's quantile bins)."""
    sketched = isinstance(reference, WindowSketch) and isinstance(current, WindowSketch)
    rows_current = current.rows if isinstance(current, WindowSketch) else len(current)
    summary = verdict(f"DRIFT: {report.reason}" if report.drift_detected else report.reason,
                      passed=not report.drift_detected)
    weight = report.importance
    ordered = sorted(report.features, key=lambda f: (not f.drifted, -weight.get(f.feature, 0.0))) if weight \
        else list(report.features)
    rows = [(f.feature, f.kind, _statistic_text(f), f.p_value, f.p_adjusted,
             f"{f.missing_reference:.1%} / {f.missing_current:.1%}",
             *((weight.get(f.feature, "-"),) if weight else ()), "DRIFT" if f.drifted else "ok")
            for f in ordered]
    sections = [summary, paragraph("model ", strong(report.model), f"; reference: {report.reference}; "
                                   f"{window_text(report, rows_current)}"),
                table(["feature", "test", "statistic", "p", "Holm p", "missing (ref / current)",
                       *(("model importance",) if weight else ()), "verdict"], rows,
                      ["fail" if f.drifted else "pass" for f in ordered])]
    plotted = plotted_features(report)
    if len(plotted) < len(report.features):
        sections.append(paragraph(f"Plots for the {len(plotted)} features that drifted or moved most; the table "
                                  f"has all {len(report.features)}."))
    for f in plotted:
        def draw(ax, f=f):
            if f.kind == "numeric" and sketched:
                edges, ref_density, cur_density = _sketch_densities(reference.numeric[f.feature],  # type: ignore[union-attr]
                                                                    current.numeric[f.feature])  # type: ignore[union-attr]
                if len(edges) > 1:
                    ax.stairs(ref_density, edges, fill=True, alpha=0.5, label="reference")
                    ax.stairs(cur_density, edges, fill=True, alpha=0.5, label="current")
            elif f.kind == "numeric":
                ref = reference[f.feature].to_numpy(dtype=float, na_value=np.nan)  # type: ignore[index]
                cur = current[f.feature].to_numpy(dtype=float, na_value=np.nan)  # type: ignore[index]
                ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]  # NaN and ±inf are in the table
                if len(ref) or len(cur):
                    bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
                    ax.hist(ref, bins=bins, alpha=0.5, density=True, label="reference")
                    ax.hist(cur, bins=bins, alpha=0.5, density=True, label="current")
            else:
                if sketched:
                    ref, cur = _top_categories_of_counts(reference.categorical[f.feature].counts,  # type: ignore[union-attr]
                                                         current.categorical[f.feature].counts)  # type: ignore[union-attr]
                else:
                    ref, cur = _top_categories(categories(reference[f.feature]),  # type: ignore[index]
                                               categories(current[f.feature]))  # type: ignore[index]
                cats = list(ref.index)
                x = np.arange(len(cats))
                ax.bar(x - 0.2, ref.to_numpy(), 0.4, label="reference")
                ax.bar(x + 0.2, cur.to_numpy(), 0.4, label="current")
                ax.set_xticks(x, cats, rotation=30 if len(cats) > 6 else 0, fontsize=7)
            ax.set_title(f"{f.feature} ({'DRIFT' if f.drifted else 'ok'})")
            ax.legend()
        sections.append(img(figure_png(draw, (5, 2.8)), f.feature))
    return page(f"Drift: {report.model}", sections)


PLOT_BINS = 40
#: A drift report draws every drifted feature, then those with the largest statistics up to this
#: many plots: fifty near-identical plots are a wall nobody reads, and 50 ms of matplotlib each.
MAX_PLOTS = 12


def plotted_features(report: DriftReport) -> list[FeatureDrift]:
    """The features a report draws: every drifted one, then the most moved, up to MAX_PLOTS."""
    drifted = [f for f in report.features if f.drifted]
    rest = sorted((f for f in report.features if not f.drifted), key=lambda f: f.p_value)
    chosen = {id(f) for f in drifted + rest[:max(0, MAX_PLOTS - len(drifted))]}
    return [f for f in report.features if id(f) in chosen]


def _sketch_densities(reference: NumericSketch, current: NumericSketch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, reference density, current density) over about PLOT_BINS reference-quantile bins
    between the reference's smallest and largest finite value (mass outside is in the table's KS)."""
    edges_all = reference.edges
    if len(edges_all) < 2:
        return edges_all, np.empty(0), np.empty(0)
    pick = np.unique(np.linspace(0, len(edges_all) - 1, min(PLOT_BINS + 1, len(edges_all))).round().astype(int))
    edges = edges_all[pick]
    widths = np.diff(edges)

    def density(s: NumericSketch) -> np.ndarray:
        if not s.present:
            return np.zeros(len(widths))
        counts = np.diff(s.at_or_below[pick]).astype(float)
        counts[0] += s.at_or_below[pick[0]] - s.below[pick[0]]  # the values equal to the first edge
        return counts / s.present / np.where(widths > 0, widths, 1.0)

    return edges, density(reference), density(current)


def _top_categories_of_counts(reference: Mapping[str, int], current: Mapping[str, int]) -> tuple[pd.Series, pd.Series]:
    """``_top_categories`` from each window's category counts (as sketches hold them)."""
    import pandas as pd

    ref = pd.Series(dict(reference), dtype=float)
    cur = pd.Series(dict(current), dtype=float)
    ref, cur = ref / max(ref.sum(), 1.0), cur / max(cur.sum(), 1.0)
    total = ref.add(cur, fill_value=0).sort_values(ascending=False, kind="stable")
    top = list(total.index[:PLOT_CATEGORIES])
    ref, cur = ref.reindex(top, fill_value=0.0), cur.reindex(top, fill_value=0.0)
    rest = len(total) - len(top)
    if rest:
        label = f"(other: {rest})"
        ref[label], cur[label] = 1 - ref.sum(), 1 - cur.sum()
    return ref, cur


def _statistic_text(f: FeatureDrift) -> str:
    """"0.0213", or "0.0213 (exact ≤ +0.00024)" when read off sketches."""
    text = f"{f.statistic:.4g}"
    return f"{text} (exact ≤ +{f.statistic_error:.2g})" if f.statistic_error else text


def window_text(report: DriftReport, rows: int) -> str:
    """"window: 1,204 rows logged 2026-11-29 01:02:03 to 01:12:09 UTC" (or what is known)."""
    start, end = report.window_start, report.window_end
    if start is None or end is None:
        return f"window: {rows:,} rows"
    fmt = "%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S"
    return f"window: {rows:,} rows logged {start:%Y-%m-%d %H:%M:%S} to {end.strftime(fmt)} UTC"


def _top_categories(reference: np.ndarray, current: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """Shares of the PLOT_CATEGORIES most frequent categories (both windows together), the rest as
    one "(other: N)" bar: a feature with 100k distinct values still draws in a blink."""
    import pandas as pd

    return _top_categories_of_counts(pd.Series(reference).value_counts().to_dict(),
                                     pd.Series(current).value_counts().to_dict())
