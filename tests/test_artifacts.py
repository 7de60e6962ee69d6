"""Model artifacts: torch.export programs + JSON signature, deterministic, loaded without pickle."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest

from loopml.artifacts import ArtifactError, Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import train_model

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))


@pytest.fixture(scope="module")
def frame():
    data = churn.generate(600, seed=2)
    return point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()


def _train(frame, **kw):
    return train_model(frame, "churned", VIEW.numeric, VIEW.categorical, **kw)


@pytest.mark.training
def test_same_seed_same_model(frame) -> None:
    a, b, c = _train(frame, epochs=3, seed=5), _train(frame, epochs=3, seed=5), _train(frame, epochs=3, seed=6)
    assert a.history == b.history
    pa, pb, pc = (Predictor.from_bytes(m.artifact).predict_frame(frame) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


@pytest.mark.training
def test_preprocessing_lives_in_the_artifact(frame) -> None:
    predictor = Predictor.from_bytes(_train(frame, epochs=2, seed=1).artifact)
    raw = frame[list(VIEW.features)].head(20)
    assert predictor.signature.vocabularies["contract"] == ["annual", "month", "two_year"]
    scores = predictor.predict_frame(raw)
    assert scores.shape == (20,) and ((scores >= 0) & (scores <= 1)).all()
    # JSON rows (the serving path, no DataFrame) score exactly like the frame
    assert np.allclose(predictor.predict_rows(raw.to_dict("records")), scores, atol=1e-6)
    unseen = raw.assign(region="atlantis")  # unknown categories map to a reserved slot
    assert np.isfinite(predictor.predict_frame(unseen)).all()


@pytest.mark.training
def test_artifact_is_an_export_program_with_raw_tensors_only(frame) -> None:
    model = _train(frame, epochs=1, seed=1)
    with zipfile.ZipFile(io.BytesIO(model.artifact)) as archive:
        names = archive.namelist()
        sig = json.loads(next(archive.read(n) for n in names if n.endswith("extra/loopml_signature.json")))
        configs = [json.loads(archive.read(n)) for n in names if n.endswith("_config.json")]
    assert sig["format"] == "loopml.export/1" and sig["task"] == "binary"
    assert any("/models/" in n and n.endswith(".json") for n in names)  # the graph, as JSON
    assert all(not meta["use_pickle"] for c in configs for meta in c["config"].values())
    assert not any(n.endswith(".py") for n in names)  # no Python source travels with it


@pytest.mark.training
def test_a_pickled_weight_is_refused_before_torch_sees_it(frame) -> None:
    model = _train(frame, epochs=1, seed=1)
    src = zipfile.ZipFile(io.BytesIO(model.artifact))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ArtifactError, match="pickled"):
        Predictor.from_bytes(out.getvalue())
    with pytest.raises(ArtifactError, match="not a loopml model artifact"):
        Predictor.from_bytes(b"plain bytes")


def test_loopml_0_1_torchscript_artifacts_still_load(frame) -> None:
    """Registries hold TorchScript versions from loopml 0.1: the same loader serves them."""
    import torch

    class Legacy(torch.nn.Module):  # the 0.1 interface: raw numerics + category strings
        def forward(self, numeric: torch.Tensor, categorical: list[list[str]]) -> torch.Tensor:
            return torch.sigmoid(numeric[:, 0] / 100.0)

    sig = json.dumps({"numeric": list(VIEW.numeric), "categorical": list(VIEW.categorical),
                      "vocabularies": {"contract": ["month"], "region": ["north"]}})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Legacy()), buf, _extra_files={"loopml_signature.json": sig})
    predictor = Predictor.from_bytes(buf.getvalue())
    assert predictor.legacy and predictor.signature.task == "binary"
    rows = frame[list(VIEW.features)].head(3)
    expected = 1 / (1 + np.exp(-rows["tenure_months"].to_numpy() / 100.0))
    assert np.allclose(predictor.predict_frame(rows), expected, atol=1e-6)
    assert np.allclose(predictor.predict_rows(rows.to_dict("records")), expected, atol=1e-6)


@pytest.mark.training
def test_training_switches_deterministic_algorithms_on_for_the_fit_only(frame) -> None:
    import torch

    assert not torch.are_deterministic_algorithms_enabled()
    _train(frame, epochs=1, seed=1)
    assert not torch.are_deterministic_algorithms_enabled()  # a caller's process is left as it was
