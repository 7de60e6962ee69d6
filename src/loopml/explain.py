"""Per-request attributions: how much each feature moved this answer away from a typical one.

Method: Shapley value sampling (Štrumbelj and Kononenko, 2014) through Captum. Each feature's
attribution is its average marginal contribution over random orders in which the features are
switched from a typical training row (the artifact's baseline: each number's mean, each category's
most frequent value) to the request's values. Why this and not integrated gradients: loopml's models
take categories as integer codes into embeddings, which have no gradient, and a path integral
between two categories means nothing; Shapley values need only forward passes, treat a number and
a category alike, and add up: the attributions of a row sum to its answer minus the baseline's
answer (exactly, by construction of each sampled order), which a reader can check on every
response. The cost is bounded and known in advance: ``samples x (features + 1)`` forward passes
per row, at most ``explain_max_rows`` rows per request, one explanation at a time per server.

For a multiclass model the attributions explain the predicted class's probability; for binary the
positive class's probability; for regression the predicted value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from loopml.artifacts import Predictor

METHOD = "shapley-value-sampling"


@dataclass(frozen=True)
class Explanation:
    """Attributions of each row's answer to each feature, from the baseline row's answer."""

    features: tuple[str, ...]
    attributions: tuple[tuple[float, ...], ...]  # one per row, in ``features`` order
    outputs: tuple[float, ...]  # the explained output of each row
    baseline_output: tuple[float, ...]  # the same output for the baseline row (per row: its target class)
    targets: tuple[str | None, ...]  # the explained class of each row (None: binary or regression)
    samples: int
    method: str = METHOD


def explain_rows(predictor: Predictor, rows: Sequence[Mapping[str, Any]], *, samples: int = 16,
                 seed: int = 0) -> Explanation:
    """Attribute each row's answer to the model's features (Shapley value sampling from the baseline)."""
    import torch
    from captum.attr import ShapleyValueSampling

    sig = predictor.signature
    numeric, codes = sig.encode_rows(rows)
    base_numeric, base_codes = sig.encode_rows([dict(sig.baseline)])
    module = predictor.module

    def forward(num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        out = module(num.to(torch.float32), cat.to(torch.int64))
        return out.reshape(out.shape[0], -1)

    with torch.no_grad():
        scores = forward(torch.from_numpy(numeric), torch.from_numpy(codes)).numpy()
        base_scores = forward(torch.from_numpy(base_numeric), torch.from_numpy(base_codes)).numpy()[0]
    multiclass = sig.task == "multiclass"
    target_index = [int(i) for i in scores.argmax(axis=1)] if multiclass else [0] * len(rows)
    k, c = len(sig.numeric), len(sig.categorical)
    masks = (torch.arange(k).reshape(1, k), torch.arange(k, k + c).reshape(1, c))
    torch.manual_seed(seed)  # the sampled orders, so the same request gets the same answer
    with torch.no_grad():
        found = ShapleyValueSampling(forward).attribute(
            (torch.from_numpy(numeric), torch.from_numpy(codes)),
            baselines=(torch.from_numpy(base_numeric), torch.from_numpy(base_codes)),
            target=target_index, feature_mask=masks, n_samples=samples, perturbations_per_eval=k + c)
    per_row = np.concatenate([found[0].detach().numpy().astype(np.float64),
                              found[1].detach().numpy().astype(np.float64)], axis=1)
    return Explanation(
        features=sig.features, attributions=tuple(tuple(float(v) for v in row) for row in per_row),
        outputs=tuple(float(scores[i, t]) for i, t in enumerate(target_index)),
        baseline_output=tuple(float(base_scores[t]) for t in target_index),
        targets=tuple(sig.classes[t] if multiclass else None for t in target_index), samples=samples)


def oip_explanation(explanation: Explanation) -> list[dict[str, Any]]:
    """The explanation as OIP output tensors: attributions [rows, features], and each row's
    explained output and baseline output."""
    n, k = len(explanation.attributions), len(explanation.features)
    tensors = [{"name": "attributions", "datatype": "FP64", "shape": [n, k],
                "data": [v for row in explanation.attributions for v in row]},
               {"name": "output", "datatype": "FP64", "shape": [n], "data": list(explanation.outputs)},
               {"name": "baseline_output", "datatype": "FP64", "shape": [n], "data": list(explanation.baseline_output)}]
    if any(t is not None for t in explanation.targets):
        tensors.append({"name": "target", "datatype": "BYTES", "shape": [n], "data": list(explanation.targets)})
    return tensors
