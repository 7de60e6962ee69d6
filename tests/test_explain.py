"""Per-request attributions: they add up to the answer minus the baseline's on every task, they are
the same for the same request, and the served explain route is off by default, bounded, and answers
bad requests with 4xx."""

from __future__ import annotations

import numpy as np
import pytest

from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.explain import explain_rows
from loopml.features import FeatureView, point_in_time_join
from loopml.serving.builtin import post_json
from loopml.serving.requests import ServerLimits
from loopml.serving.runtime import ModelServer
from loopml.trainers import train_model

pytestmark = pytest.mark.training

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))


@pytest.fixture(scope="module")
def frame():
    data = churn.generate(600, seed=5)
    return point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()


def _predictor(frame, task: str) -> Predictor:
    label = {"binary": "churned", "regression": "monthly_charges", "multiclass": "contract"}[task]
    numeric = tuple(c for c in VIEW.numeric if c != label)
    categorical = tuple(c for c in VIEW.categorical if c != label)
    return Predictor.from_bytes(train_model(frame, label, numeric, categorical, task=task, epochs=3).artifact)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_attributions_add_up_to_the_answer_minus_the_baseline(frame, task: str) -> None:
    predictor = _predictor(frame, task)
    sig = predictor.signature
    assert set(sig.baseline) == set(sig.features)  # recorded at training: means and most frequent values
    rows = frame[list(sig.features)].head(5).to_dict("records")
    found = explain_rows(predictor, rows, samples=8)
    scores = predictor.predict_rows(rows)
    for i, row in enumerate(found.attributions):
        assert len(row) == len(sig.features)
        assert sum(row) == pytest.approx(found.outputs[i] - found.baseline_output[i], abs=1e-5)
        expected = scores[i].max() if task == "multiclass" else np.ravel(scores)[i]
        assert found.outputs[i] == pytest.approx(float(expected), rel=1e-5)
    if task == "multiclass":
        assert all(t in sig.classes for t in found.targets)
    assert explain_rows(predictor, rows, samples=8) == found  # the same request, the same explanation


def test_a_row_equal_to_the_baseline_has_nothing_to_explain(frame) -> None:
    predictor = _predictor(frame, "binary")
    found = explain_rows(predictor, [dict(predictor.signature.baseline)], samples=4)
    assert found.attributions[0] == pytest.approx((0.0,) * len(predictor.signature.features), abs=1e-7)


def tensors(rows: list[dict]) -> dict:
    numeric = set(VIEW.numeric)
    return {"id": "req-1", "inputs": [
        {"name": f, "shape": [len(rows)], "datatype": "FP32" if f in numeric else "BYTES",
         "data": [r[f] for r in rows]} for f in (*VIEW.numeric, *VIEW.categorical)]}


@pytest.mark.server
def test_the_explain_route_is_off_by_default_then_bounded_and_strict(frame, tmp_path) -> None:
    predictor = _predictor(frame, "binary")
    rows = frame[list(predictor.signature.features)].head(3).to_dict("records")
    off = ModelServer("churn", log_dir=tmp_path / "off").start()
    try:
        off.add_version(1, predictor)
        status, body = post_json(off.url + "/v2/models/churn/explain", tensors(rows))
        assert status == 404 and "explain = true" in body["error"]
    finally:
        off.stop()
    server = ModelServer("churn", log_dir=tmp_path / "on",
                         limits=ServerLimits(explain=True, explain_max_rows=4, explain_samples=8)).start()
    try:
        server.add_version(1, predictor)
        status, body = post_json(server.url + "/v2/models/churn/explain", tensors(rows))
        assert status == 200, body
        assert body["model_version"] == "1" and body["id"] == "req-1"
        assert body["parameters"]["method"] == "shapley-value-sampling"
        assert body["parameters"]["features"] == list(predictor.signature.features)
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["attributions"]["shape"] == [3, 5]
        values = np.array(outputs["attributions"]["data"]).reshape(3, 5)
        assert np.allclose(values.sum(axis=1),
                           np.array(outputs["output"]["data"]) - np.array(outputs["baseline_output"]["data"]),
                           atol=1e-5)
        status, same = post_json(server.url + "/v2/models/churn/versions/1/explain", tensors(rows))
        assert status == 200 and same["outputs"] == body["outputs"]
        too_many = frame[list(predictor.signature.features)].head(5).to_dict("records")
        status, body = post_json(server.url + "/v2/models/churn/explain", tensors(too_many))
        assert status == 422 and "1 to 4" in body["error"]
        bad = tensors(rows)
        bad["inputs"][0]["data"] = ["x", "y", "z"]
        status, body = post_json(server.url + "/v2/models/churn/explain", bad)
        assert 400 <= status < 500 and "tenure_months" in body["error"]
        status, body = post_json(server.url + "/v2/models/churn/versions/7/explain", tensors(rows))
        assert status == 404
        status, body = post_json(server.url + "/v2/models/churn/infer", tensors(rows))
        assert status == 200  # scoring is unaffected
    finally:
        server.stop()
