"""The example model: a small PyTorch MLP whose preprocessing lives inside the artifact.

The saved artifact is one TorchScript file. Its ``forward(numeric, categorical)`` takes raw
feature values (floats, and strings per categorical column), scales numerics with the training
mean/std and encodes categories with the training vocabulary (unknown values map to a reserved
slot), so serving needs nothing but the file. A JSON signature (feature names, types, vocabularies)
rides along as a TorchScript extra file. Loading uses ``torch.jit.load``: no pickle, no code from
the artifact runs in Python.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml.errors import DataValidationError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from loopml.config import TrainingConfig
    from loopml.features import FeatureView

SIGNATURE_FILE = "loopml_signature.json"


@dataclass(frozen=True)
class Signature:
    """What a model expects: feature names, kinds and categorical vocabularies."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabularies: dict[str, list[str]]

    def to_json(self) -> str:
        return json.dumps({"numeric": list(self.numeric), "categorical": list(self.categorical),
                           "vocabularies": self.vocabularies}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        raw = json.loads(text)
        return cls(tuple(raw["numeric"]), tuple(raw["categorical"]), raw["vocabularies"])


def _build_module(n_numeric: int, vocabs: list[list[str]], hidden: int, mean: np.ndarray,
                  std: np.ndarray) -> torch.nn.Module:
    import torch
    from torch import nn

    class TabularMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
            # Types are inferred by TorchScript from the values (List[int], List[Dict[str, int]]).
            self.vocab_sizes = [len(v) + 1 for v in vocabs]
            self.lookups = [{w: i + 1 for i, w in enumerate(v)} for v in vocabs]
            width = n_numeric + sum(self.vocab_sizes)
            self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def encode(self, numeric: torch.Tensor, categorical: list[list[str]]) -> torch.Tensor:
            parts = [(numeric - self.mean) / self.std]
            for j, lookup in enumerate(self.lookups):
                idx = torch.tensor([lookup.get(row[j], 0) for row in categorical], dtype=torch.long)
                parts.append(torch.nn.functional.one_hot(idx, self.vocab_sizes[j]).to(torch.float32))
            return torch.cat(parts, dim=1)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(1)

        def forward(self, numeric: torch.Tensor, categorical: list[list[str]]) -> torch.Tensor:
            return torch.sigmoid(self.logits(self.encode(numeric, categorical)))

    return TabularMLP()


def split_inputs(frame: pd.DataFrame, sig: Signature) -> tuple[np.ndarray, list[list[str]]]:
    """Numeric matrix and categorical string rows, in signature order."""
    missing = [c for c in (*sig.numeric, *sig.categorical) if c not in frame.columns]
    if missing:
        raise DataValidationError(f"input lacks feature column(s) {missing}", column=missing[0])
    numeric = frame[list(sig.numeric)].to_numpy(dtype=np.float32, na_value=np.nan)
    numeric = np.nan_to_num(numeric, nan=0.0) if numeric.size else numeric.reshape(len(frame), 0)
    cats = frame[list(sig.categorical)].astype("string").fillna("").to_numpy().tolist()
    return numeric, [[str(v) for v in row] for row in cats]


@dataclass(frozen=True)
class TrainedModel:
    artifact: bytes
    sha256: str
    signature: Signature
    history: list[dict[str, float]]


def train(frame: pd.DataFrame, label: str, view: FeatureView, cfg: TrainingConfig,
          on_epoch: Any = None) -> TrainedModel:
    """Train deterministically on CPU; ``on_epoch(epoch, metrics)`` is called after each epoch."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
    vocabs = {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in view.categorical}
    sig = Signature(view.numeric, view.categorical, vocabs)
    numeric, cats = split_inputs(frame, sig)
    mean = numeric.mean(axis=0) if len(numeric) else np.zeros(len(sig.numeric))
    std = numeric.std(axis=0) + 1e-6 if len(numeric) else np.ones(len(sig.numeric))
    module = _build_module(len(sig.numeric), [vocabs[c] for c in sig.categorical],
                           cfg.hidden_units, mean, std)
    x = module.encode(torch.tensor(numeric), cats)
    y = torch.tensor(frame[label].to_numpy(dtype=np.float32))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(cfg.epochs):
        module.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(module.logits(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        module.eval()
        with torch.no_grad():
            prob = torch.sigmoid(module.logits(x)).numpy()
        metrics = {"train_loss": total / len(y), "train_auc": auc(frame[label].to_numpy(), prob)}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    module.eval()
    scripted = torch.jit.script(module)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={SIGNATURE_FILE: sig.to_json()})
    data = buf.getvalue()
    return TrainedModel(data, hashlib.sha256(data).hexdigest(), sig, history)


class Predictor:
    """A loaded artifact: scores pandas frames or JSON rows. Thread-safe for inference."""

    def __init__(self, module: Any, signature: Signature) -> None:
        self.module = module
        self.signature = signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Predictor:
        import torch

        extra = {SIGNATURE_FILE: ""}
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
        module.eval()
        return cls(module, Signature.from_json(extra[SIGNATURE_FILE]))

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        import torch

        numeric, cats = split_inputs(frame, self.signature)
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(numeric)), cats).numpy()


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via ranks (ties averaged); NaN if one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
