"""The model artifact: deterministic for a seed, self-contained, loaded without pickle."""

from __future__ import annotations

import zipfile
from io import BytesIO

import numpy as np
import pytest

from loopml.config import TrainingConfig
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.modeling import Predictor, train

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))


@pytest.fixture(scope="module")
def frame():
    data = churn.generate(600, seed=2)
    return point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()


def test_same_seed_same_model(frame) -> None:
    a = train(frame, "churned", VIEW, TrainingConfig(epochs=3, seed=5))
    b = train(frame, "churned", VIEW, TrainingConfig(epochs=3, seed=5))
    c = train(frame, "churned", VIEW, TrainingConfig(epochs=3, seed=6))
    assert a.history == b.history
    pa, pb, pc = (Predictor.from_bytes(m.artifact).predict_frame(frame) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


def test_preprocessing_lives_in_the_artifact(frame) -> None:
    model = train(frame, "churned", VIEW, TrainingConfig(epochs=2, seed=1))
    predictor = Predictor.from_bytes(model.artifact)
    raw = frame[list(VIEW.features)].head(20)
    assert predictor.signature.vocabularies["contract"] == ["annual", "month", "two_year"]
    scores = predictor.predict_frame(raw)
    assert scores.shape == (20,) and ((scores >= 0) & (scores <= 1)).all()
    unseen = raw.assign(region="atlantis")  # unknown categories map to a reserved slot
    assert np.isfinite(predictor.predict_frame(unseen)).all()


def test_artifact_holds_no_pickled_python_code(frame) -> None:
    model = train(frame, "churned", VIEW, TrainingConfig(epochs=1, seed=1))
    with zipfile.ZipFile(BytesIO(model.artifact)) as archive:
        names = archive.namelist()
    assert any(n.endswith("extra/loopml_signature.json") for n in names)
    assert any(n.endswith(".py") or "/code/" in n for n in names)  # TorchScript IR, not pickled classes
