"""The direct runner of exported graphs answers exactly what ``torch.export.load`` answers, and
hands anything outside its subset to torch's loader instead of guessing."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from loopml.artifacts import ArtifactError, Predictor, Signature, export_artifact
from loopml.aten_program import AtenProgram, UnsupportedProgram
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import train_model

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    data = churn.generate(800, seed=3)
    out = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
    charges = out["monthly_charges"]
    out["plan"] = np.where(charges > 60, "gold", np.where(charges > 30, "silver", "basic"))
    out["spend"] = out["monthly_charges"] * 12 + out["tenure_months"]
    return out.reset_index(drop=True)


def _torch_loaded(artifact: bytes, signature: Signature) -> Predictor:
    program = torch.export.load(io.BytesIO(artifact))
    return Predictor(program.module(), signature)


class _Embedding(torch.nn.Module):
    """A team's network using operators the MLP does not: embeddings, layer norm, dropout, GELU."""

    def __init__(self, sig: Signature) -> None:
        super().__init__()
        self.embeddings = torch.nn.ModuleList(torch.nn.Embedding(n, 4) for n in sig.cardinalities)
        self.norm = torch.nn.LayerNorm(len(sig.numeric) + 4 * len(sig.cardinalities))
        self.head = torch.nn.Sequential(torch.nn.Linear(self.norm.normalized_shape[0], 8), torch.nn.GELU(),
                                        torch.nn.Dropout(0.2), torch.nn.Linear(8, sig.n_outputs))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [numeric] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.head(self.norm(torch.cat(parts, dim=1))).view(numeric.shape[0], -1)


CASES = {
    "mlp binary": dict(label="churned", task="binary"),
    "mlp multiclass": dict(label="plan", task="multiclass"),
    "mlp regression": dict(label="spend", task="regression"),
    "own module, binary": dict(label="churned", task="binary", trainer=_Embedding),
    "own module, multiclass": dict(label="plan", task="multiclass", trainer=_Embedding),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_direct_runner_answers_bit_for_bit_what_torch_export_load_answers(frame, case) -> None:
    spec = dict(CASES[case])
    label = spec.pop("label")
    trained = train_model(frame, label, VIEW.numeric, VIEW.categorical, epochs=2, **spec)
    predictor = Predictor.from_bytes(trained.artifact)
    assert isinstance(predictor.module, AtenProgram)  # no fallback for what loopml's trainers export
    reference = _torch_loaded(trained.artifact, predictor.signature)
    rows = frame[list(VIEW.features)].assign(region=lambda f: f["region"].where(f.index % 7 != 0, "atlantis"))
    for batch in (rows.head(1), rows.head(3), rows):  # batch 1 and an unseen category included
        assert np.array_equal(predictor.predict_frame(batch), reference.predict_frame(batch))
        assert np.array_equal(predictor.predict_rows(batch.to_dict("records")),
                              reference.predict_rows(batch.to_dict("records")))


class _Branching(torch.nn.Module):
    """``torch.cond`` exports a higher-order operator with subgraphs: outside the direct subset."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([2.0]))

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        total = numeric.sum(dim=1)
        return torch.cond(total.sum() > 0, lambda t: torch.sigmoid(t * self.scale), lambda t: torch.sigmoid(-t),
                          (total,))


def test_a_graph_outside_the_subset_is_loaded_by_torch_and_answers_the_same() -> None:
    sig = Signature(("a", "b"), (), {}, "binary")
    artifact = export_artifact(_Branching(), sig)
    with pytest.raises(UnsupportedProgram, match="not an ATen overload"):
        AtenProgram.from_archive(artifact)
    predictor = Predictor.from_bytes(artifact)
    assert not isinstance(predictor.module, AtenProgram)
    rows = [{"a": 1.0, "b": 2.0}, {"a": -3.0, "b": 0.5}]
    expected = torch.sigmoid(torch.tensor([3.0, -2.5]) * 2.0).numpy()
    assert np.allclose(predictor.predict_rows(rows), expected)


def _rewrite_json(artifact: bytes, change, member: str = "/models/model.json") -> bytes:
    """The archive with ``change`` applied to the JSON member whose name ends with ``member``."""
    src = zipfile.ZipFile(io.BytesIO(artifact))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(member):
                document = json.loads(data)
                change(document)
                data = json.dumps(document).encode()
            dst.writestr(info, data)
    return out.getvalue()


def test_each_unread_part_of_the_format_is_named_not_guessed(frame) -> None:
    artifact = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=1).artifact

    def other_op(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.mylib.exfiltrate.default"

    def newer_schema(program):
        program["schema_version"]["major"] += 1

    def older_opset(program):
        program["opset_version"]["aten"] -= 1

    def expression_argument(program):
        node = program["graph_module"]["graph"]["nodes"][0]
        node["inputs"][1]["arg"] = {"as_sym_int": {"as_expr": {"expr_str": "s0 + 1"}}}

    for change, reason in ((other_op, "not an ATen overload"), (newer_schema, "schema major"),
                           (older_opset, "upgraders"), (expression_argument, "symbolic value of kind as_expr")):
        with pytest.raises(UnsupportedProgram, match=reason):
            AtenProgram.from_archive(_rewrite_json(artifact, change))


def test_the_archive_check_still_runs_before_either_loader(frame) -> None:
    artifact = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=1).artifact

    def pickled(config):
        next(iter(config["config"].values()))["use_pickle"] = True

    with pytest.raises(ArtifactError, match="pickled"):
        Predictor.from_bytes(_rewrite_json(artifact, pickled, "model_weights_config.json"))


def test_answers_need_no_autograd_guard(frame) -> None:
    """The direct runner's weights and inputs never require grad, so a call outside inference mode
    records no graph: the serving path skips the guard's cost."""
    predictor = Predictor.from_bytes(train_model(frame, "churned", VIEW.numeric, VIEW.categorical,
                                                 epochs=1).artifact)
    numeric, codes = predictor.signature.encode_rows(frame[list(VIEW.features)].head(4).to_dict("records"))
    with torch.enable_grad():
        out = predictor.module(torch.from_numpy(numeric), torch.from_numpy(codes))
    assert not out.requires_grad and out.grad_fn is None
