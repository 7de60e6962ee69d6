"""Drift detection: quiet on the same distribution at the documented rate, loud on a known shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from loopml.drift import chi_square_counts, detect_drift, holm, ks_two_sample
from loopml.stages.drift_check import check_drift
from loopml.stages.project import view_of

NUMERIC = ("a", "b", "c")
CATEGORICAL = ("k",)


def sample(rng: np.random.Generator, n: int, shift: float = 0.0, mix: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "a": rng.normal(shift, 1, n), "b": rng.exponential(1, n), "c": rng.poisson(2, n).astype(float),
        "k": rng.choice(["x", "y", "z"], n, p=[0.5 - mix, 0.3, 0.2 + mix]),
    })


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.1, 1, 2000)
    d, p = ks_two_sample(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=0.15)


def test_chi_square_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.choice(list("xyz"), 2000), rng.choice(list("xyz"), 1000, p=[0.4, 0.3, 0.3])
    stat, p = chi_square_counts(a, b)
    table = pd.crosstab(np.r_[np.zeros(2000), np.ones(1000)], np.r_[a, b]).to_numpy()
    ref = stats.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])


def test_same_distribution_raises_alarms_at_most_at_the_documented_rate() -> None:
    rng = np.random.default_rng(42)
    reference = sample(rng, 5000)
    alpha, trials = 0.05, 300
    alarms = sum(detect_drift(reference, sample(rng, 400), numeric=NUMERIC, categorical=CATEGORICAL,
                              alpha=alpha, min_samples=200).drift_detected for _ in range(trials))
    # Family-wise control: P(any alarm) <= alpha. Allow binomial noise (3 sigma above alpha).
    assert alarms / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_a_known_shift_is_detected_in_the_shifted_features_only() -> None:
    rng = np.random.default_rng(7)
    reference = sample(rng, 5000)
    report = detect_drift(reference, sample(rng, 400, shift=0.4, mix=0.2), numeric=NUMERIC,
                          categorical=CATEGORICAL, alpha=0.01, min_samples=200, model="m")
    assert report.drift_detected
    assert set(report.drifted_features) == {"a", "k"}
    assert "a" in report.reason and "k" in report.reason


def test_too_few_samples_give_no_verdict() -> None:
    rng = np.random.default_rng(8)
    report = detect_drift(sample(rng, 5000), sample(rng, 50, shift=3), numeric=NUMERIC,
                          categorical=CATEGORICAL, alpha=0.01, min_samples=200)
    assert not report.drift_detected and "at least 200" in report.reason


def test_an_empty_window_gives_no_verdict() -> None:
    rng = np.random.default_rng(9)
    report = detect_drift(sample(rng, 100), pd.DataFrame(), numeric=NUMERIC, categorical=CATEGORICAL,
                          alpha=0.01, min_samples=200)
    assert not report.drift_detected and "only 0 current rows" in report.reason


def test_a_feature_that_turns_all_missing_drifts_for_both_kinds_alike() -> None:
    rng = np.random.default_rng(10)
    reference, current = sample(rng, 2000), sample(rng, 400)
    current["a"] = np.nan  # a numeric feed broke
    current["k"] = None    # and a categorical one
    report = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, alpha=0.01,
                          min_samples=200)
    assert set(report.drifted_features) == {"a", "k"}
    by_name = {f.feature: f for f in report.features}
    assert (by_name["a"].missing_reference, by_name["a"].missing_current) == (0.0, 1.0)
    assert (by_name["k"].missing_reference, by_name["k"].missing_current) == (0.0, 1.0)
    # The same share of missing values in both windows is no drift, for either kind.
    reference.loc[reference.index[::10], ["a", "k"]] = [np.nan, None]
    current = sample(rng, 400)
    current.loc[current.index[::10], ["a", "k"]] = [np.nan, None]
    report = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, alpha=0.01,
                          min_samples=200)
    assert not report.drift_detected, report.reason


def test_infinite_values_are_compared_and_the_report_still_renders() -> None:
    from loopml.drift import render_html

    rng = np.random.default_rng(11)
    reference, current = sample(rng, 2000), sample(rng, 400)
    current.loc[current.index[:200], "b"] = np.inf
    report = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, alpha=0.01,
                          min_samples=200)
    assert report.drifted_features == ("b",)
    html = render_html(report, reference, current)
    assert "<img" in html and "DRIFT" in html


def test_an_empty_reference_gives_no_verdict_instead_of_nan() -> None:
    rng = np.random.default_rng(12)
    report = detect_drift(sample(rng, 0), sample(rng, 400), numeric=NUMERIC, categorical=CATEGORICAL,
                          alpha=0.01, min_samples=200)
    assert not report.drift_detected and "reference has 0 rows" in report.reason
    assert report.features == ()


def test_a_feature_with_100k_categories_is_tested_and_drawn_as_top_20_plus_other() -> None:
    import base64
    import re

    from loopml.drift import _top_categories, categories, render_html

    rng = np.random.default_rng(13)
    reference = pd.DataFrame({"k": rng.integers(0, 100_000, 100_000).astype(str)})
    current = pd.DataFrame({"k": rng.integers(0, 100_000, 50_000).astype(str)})
    report = detect_drift(reference, current, numeric=[], categorical=["k"], alpha=0.01, min_samples=200)
    assert not report.drift_detected, report.reason
    html = render_html(report, reference, current)  # seconds, not minutes: 21 bars, not 100k
    png = base64.b64decode(re.search(r"src='data:image/png;base64,([^']+)'", html)[1])
    assert png.startswith(b"\x89PNG")
    ref, cur = _top_categories(categories(reference["k"]), categories(current["k"]))
    assert len(ref) == len(cur) == 21 and ref.index[-1].startswith("(other: ")
    assert ref.sum() == pytest.approx(1) and cur.sum() == pytest.approx(1)


def test_confirmed_drift_alerts_once_per_cooldown_and_again_after_a_new_promotion(tmp_path) -> None:
    from loopml.context import Workspace
    from loopml.examples import churn
    from loopml.testing import HookRecorder

    churn.init_project(tmp_path, n_customers=300)
    ws = Workspace.open(tmp_path / "loopml.toml")
    recorder = HookRecorder()
    ws.manager.register(recorder, "recorder")
    reference = pd.DataFrame(churn.request_rows(churn.generate(1500, seed=1), view_of(ws).features))
    shifted = pd.DataFrame(churn.request_rows(churn.generate(1500, seed=2, drift=1.0), view_of(ws).features))
    t0 = 1_000_000.0
    alerts = []
    for version, now in [(1, t0), (1, t0 + 60), (2, t0 + 120), (2, t0 + 120 + 3601)]:
        report, key, alert = check_drift(ws, reference, shifted, "ref", production_version=version, now=now)
        assert report.drift_detected and ws.store.exists(key)
        alerts.append(alert)
        if not alert:
            assert "alert suppressed: cooldown" in report.reason
    assert alerts == [True, False, True, True]  # cooldown is 60 minutes in the example config
    assert len(recorder.named("loopml_on_drift")) == 3


def test_the_report_shows_the_monitored_window() -> None:
    from datetime import UTC, datetime

    from loopml.drift import render_html

    rng = np.random.default_rng(14)
    reference, current = sample(rng, 1000), sample(rng, 300)
    window = (datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC), datetime(2026, 11, 29, 1, 12, 9, tzinfo=UTC))
    report = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, alpha=0.01,
                          min_samples=200, model="churn", window=window)
    html = render_html(report, reference, current)
    assert "window: 300 rows logged 2026-11-29 01:02:03 to 01:12:09 UTC" in html
    assert "None" not in html


def test_the_report_shows_names_and_values_as_text_never_as_markup() -> None:
    from loopml.drift import render_html

    rng = np.random.default_rng(13)
    reference, current = sample(rng, 2000), sample(rng, 400)
    hostile = "<script>alert(1)</script>"
    reference = reference.rename(columns={"k": hostile})
    current = current.rename(columns={"k": hostile})
    current[hostile] = "x&y<z>"  # a drifted category whose label looks like markup
    report = detect_drift(reference, current, numeric=NUMERIC, categorical=[hostile], alpha=0.01, min_samples=200)
    html = render_html(report, reference, current)
    assert report.drift_detected and "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "p &lt; 0.01" in html  # the verdict's reason, escaped like every other text


@pytest.mark.parametrize("shifted", [3, 15])
def test_a_wide_report_draws_every_drifted_feature_and_the_most_moved_up_to_a_dozen(shifted: int) -> None:
    from loopml.drift import MAX_PLOTS, render_html

    rng = np.random.default_rng(13)
    names = [f"f{i:02d}" for i in range(40)]
    reference = pd.DataFrame({n: rng.normal(0, 1, 3000) for n in names})
    current = pd.DataFrame({n: rng.normal(1.0 if i < shifted else 0, 1, 3000) for i, n in enumerate(names)})
    report = detect_drift(reference, current, numeric=names, categorical=[], alpha=0.01, min_samples=200)
    assert len(report.drifted_features) == shifted
    html = render_html(report, reference, current)
    assert html.count("<img") == max(MAX_PLOTS, shifted)
    for feature in report.drifted_features:  # every drifted feature has its plot (the alt text names it)
        assert f"alt='{feature}'" in html
    assert "the table has all 40" in html
