"""Permutation importance: what a model relies on, in the gate report, the card and the drift report."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from loopml import drift
from loopml.artifacts import Predictor
from loopml.importance import permutation_importance
from loopml.records import DriftReport, FeatureDrift
from loopml.trainers import train_model


@pytest.fixture(scope="module")
def signal_and_noise():
    """The label depends on ``signal`` only; ``noise`` and ``colour`` are independent of it."""
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n),
                          "colour": rng.choice(["red", "green", "blue"], size=n)})
    frame["label"] = (frame["signal"] + rng.normal(scale=0.3, size=n) > 0).astype(int)
    model = train_model(frame.iloc[:2000], "label", ("signal", "noise"), ("colour",), epochs=5, seed=1)
    return Predictor.from_bytes(model.artifact), frame.iloc[2000:].reset_index(drop=True)


@pytest.mark.training
def test_the_feature_the_label_depends_on_ranks_first_and_noise_scores_about_zero(signal_and_noise) -> None:
    predictor, holdout = signal_and_noise
    importance = permutation_importance(predictor, holdout, holdout["label"].to_numpy(dtype=float))
    assert next(iter(importance)) == "signal" and importance["signal"] > 0.2  # AUC falls towards 0.5
    assert abs(importance["noise"]) < 0.02 and abs(importance["colour"]) < 0.02
    again = permutation_importance(predictor, holdout, holdout["label"].to_numpy(dtype=float))
    assert again == importance  # seeded: the same model and rows give the same numbers


def _drifted(name: str, p: float) -> FeatureDrift:
    return FeatureDrift(name, "numeric", 0.3, p, p, True, 1000, 1000, 0.0, 0.0, 0.0)


def test_a_drift_report_ranks_drifted_features_by_what_the_model_relies_on() -> None:
    now = datetime.now(UTC)
    features = (_drifted("noise", 1e-9), _drifted("signal", 1e-4),
                FeatureDrift("colour", "categorical", 1.0, 0.5, 0.5, False, 1000, 1000, 0.0, 0.0, 0.0))
    report = DriftReport("m", "ref", now, now, features, True, "drift in noise, signal (Holm-adjusted p < 0.01)")
    ranked = drift.with_importance(report, {"signal": 0.31, "colour": 0.01, "noise": 0.0})
    assert ranked.reason.startswith("drift in signal (importance 0.310), noise (importance 0.000)")
    sketch_free = pd.DataFrame({"signal": [0.0, 1.0], "noise": [0.0, 1.0], "colour": ["red", "blue"]})
    html = drift.render_html(ranked, sketch_free, sketch_free)
    assert "model importance" in html and html.index(">signal<") < html.index(">noise<")
    assert drift.with_importance(report, {}) is report  # no importance recorded: unchanged
