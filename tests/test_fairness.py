"""Fairness gates: equal ranking quality is not equal treatment (selection rate, error rates)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml import fairness, tasks
from loopml.config import GatesConfig


def _judge(y: np.ndarray, pred: np.ndarray, group: np.ndarray, task: str = "binary", **gates) -> dict:
    primary = tasks.primary_metric(task)
    frame = pd.DataFrame({"group": group})
    slices = fairness.slices(task, primary, frame, "group", y, pred)
    return {c.name: c for c in fairness.checks(task, primary, slices, "group", GatesConfig(**gates))}


def _two_groups(rate_a: float, rate_b: float, n: int = 1000, seed: int = 0):
    """Both groups ranked perfectly (AUC 1 in each), but positives predicted at different rates."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2 * n).astype(float)
    group = np.array(["a"] * n + ["b"] * n)
    rank = rng.random(2 * n) * 0.1 + y * 0.5  # every positive above every negative
    cut = np.where(group == "a", np.quantile(rank[:n], 1 - rate_a), np.quantile(rank[n:], 1 - rate_b))
    pred = np.clip(0.5 + (rank - cut), 0, 1)
    return y, pred, group


def test_a_model_that_ranks_both_groups_alike_but_selects_one_far_less_is_refused() -> None:
    y, pred, group = _two_groups(0.61, 0.077)  # the rates seen on real data, which passed before
    checks = _judge(y, pred, group)
    assert checks["fairness"].passed and checks["fairness"].value == pytest.approx(0.0)  # AUC alike: blind
    assert not checks["selection-rate"].passed
    assert checks["selection-rate"].value == pytest.approx(0.077 / 0.61, abs=0.01)
    assert "group=a: 0.61" in checks["selection-rate"].reason and "group=b: 0.07" in checks["selection-rate"].reason
    assert not checks["error-rate-gap"].passed  # the selected group also gets far more false positives


def test_alike_rates_pass_and_fairlearn_agrees_on_the_numbers() -> None:
    y, pred, group = _two_groups(0.50, 0.45, seed=1)
    checks = _judge(y, pred, group)
    assert checks["selection-rate"].passed and checks["error-rate-gap"].passed
    import fairlearn.metrics as fairlearn  # a test dependency: the cross-check never skips
    labels = (pred >= 0.5).astype(int)
    assert checks["selection-rate"].value == pytest.approx(
        fairlearn.demographic_parity_ratio(y, labels, sensitive_features=group))
    assert checks["error-rate-gap"].value == pytest.approx(
        fairlearn.equalized_odds_difference(y, labels, sensitive_features=group))


def test_small_slices_are_reported_not_gated_and_thresholds_can_be_turned_off() -> None:
    y, pred, group = _two_groups(0.61, 0.077, n=40)
    assert _judge(y, pred, group)["selection-rate"].passed  # 40 rows per slice < min_slice_rows 50
    y, pred, group = _two_groups(0.61, 0.077)
    off = _judge(y, pred, group, min_selection_rate_ratio=0.0, max_error_rate_gap=1.0)
    assert off["selection-rate"].passed and off["error-rate-gap"].passed


def test_regression_tasks_keep_the_metric_gap_only() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=400)
    names = set(_judge(y, y + rng.normal(scale=0.1, size=400), np.array(["a", "b"] * 200), task="regression"))
    assert names == {"fairness"}


def test_a_regression_gap_is_judged_relative_to_the_holdout_metric_whatever_the_target_scale() -> None:
    from loopml import fairness, tasks
    from loopml.config import GatesConfig

    rmse = tasks.metric("regression", "rmse")
    for scale in (0.01, 1.0, 1000.0):  # the same model on a target in dollars, in cents, in thousands
        fair = {"senior=no": {"rows": 300.0, "rmse": 10.0 * scale}, "senior=yes": {"rows": 100.0, "rmse": 11.0 * scale}}
        [check] = fairness.checks("regression", rmse, fair, "senior", GatesConfig(), overall=10.3 * scale)
        assert check.passed and check.value == pytest.approx(1.0 / 10.3) and check.threshold == 0.25
        unfair = {"senior=no": {"rows": 300.0, "rmse": 8.0 * scale},
                  "senior=yes": {"rows": 100.0, "rmse": 16.0 * scale}}
        [check] = fairness.checks("regression", rmse, unfair, "senior", GatesConfig(), overall=10.0 * scale)
        assert not check.passed and "80.0% of the holdout's rmse" in check.reason
    absolute = GatesConfig(max_fairness_gap=5.0)  # set explicitly: in the target's units, as before
    [check] = fairness.checks("regression", rmse, fair, "senior", absolute, overall=10.3 * scale)
    assert check.threshold == 5.0 and not check.passed  # a 1000-unit gap at scale 1000
