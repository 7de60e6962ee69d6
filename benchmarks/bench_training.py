"""Training-loop overhead of loopml over the same plain PyTorch loop, and artifact load times.

    .venv/bin/python benchmarks/bench_training.py       # writes benchmarks/results/training.json

1. The same network (loopml's MLP), data, optimiser, batches and seed, trained by
   ``loopml.trainers.fit_network`` (per-epoch metrics, progress callback, early-stopping
   bookkeeping, label checks, export) and by a plain loop that only steps the optimiser. Runs are
   interleaved; each repetition is a back-to-back pair and the median of the pairs'
   ratios is reported. Export (``torch.export``) is a one-time
   cost per model and is reported on its own.
   Both loops are warmed up once before the measured runs.
2. Load time of the exported artifact through loopml's loader (archive safety check included)
   against ``torch.jit.load`` of a TorchScript trace of the same program, and against
   ``torch.export.load`` of the same archive (what loopml used before its direct runner).
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from loopml import trainers
from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import MlpOptions, TrainRequest, _mlp_factory, fit_network

CUSTOMERS = 40_000
EPOCHS = 8
REPEATS = 9
VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))


def plain_loop(frame, options: MlpOptions, seed: int) -> float:
    """What a team would write by hand: encode, scale, train; no metrics, no export."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    request = TrainRequest(frame, "churned", VIEW.numeric, VIEW.categorical, "binary", ("0", "1"), seed=seed)
    sig = request.signature()
    numeric, codes = sig.encode_frame(frame)
    mean, std = numeric.mean(axis=0), numeric.std(axis=0) + 1e-6
    x_num = torch.from_numpy(((numeric - mean) / std).astype(np.float32))
    x_cat = torch.from_numpy(codes)
    y = torch.from_numpy(frame["churned"].to_numpy(dtype=np.float32))
    net = _mlp_factory(options.hidden_units)(sig)
    opt = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(options.epochs):
        net.train()
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), options.batch_size):
            idx = perm[start:start + options.batch_size]
            opt.zero_grad()
            loss = loss_fn(net(x_num[idx], x_cat[idx]).reshape(-1), y[idx])
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def loopml_loop(frame, options: MlpOptions, seed: int) -> tuple[float, float, bytes]:
    export_seconds = 0.0
    real_export = trainers.export_artifact

    def timed_export(*args, **kwargs):
        nonlocal export_seconds
        t = time.perf_counter()
        out = real_export(*args, **kwargs)
        export_seconds = time.perf_counter() - t
        return out

    trainers.export_artifact = timed_export
    try:
        request = TrainRequest(frame, "churned", VIEW.numeric, VIEW.categorical, "binary", ("0", "1"), seed=seed,
                               on_epoch=lambda e, t, m: None)
        t0 = time.perf_counter()
        trained = fit_network(_mlp_factory(options.hidden_units), request,
                              trainers.LoopOptions(**options.model_dump(exclude={"hidden_units"})))
        total = time.perf_counter() - t0
    finally:
        trainers.export_artifact = real_export
    return total, export_seconds, trained.artifact


def load_times(artifact: bytes, repeats: int = 15) -> dict[str, float]:
    numeric = torch.zeros(3, len(VIEW.numeric))
    codes = torch.zeros(3, len(VIEW.categorical), dtype=torch.long)
    exported = torch.export.load(io.BytesIO(artifact)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(exported, (numeric, codes), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    scripted = buf.getvalue()
    export_ms, script_ms, torch_export_ms = [], [], []
    for i in range(repeats):
        for kind in (("export", "script", "torch") if i % 2 == 0 else ("torch", "script", "export")):
            t0 = time.perf_counter()
            if kind == "export":
                Predictor.from_bytes(artifact).predict_rows([{}])
                export_ms.append((time.perf_counter() - t0) * 1000)
            elif kind == "torch":
                torch.export.load(io.BytesIO(artifact)).module()(numeric[:1], codes[:1])
                torch_export_ms.append((time.perf_counter() - t0) * 1000)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(io.BytesIO(scripted))
                module(numeric[:1], codes[:1])
                script_ms.append((time.perf_counter() - t0) * 1000)
    return {"export_load_and_first_answer_ms": statistics.median(export_ms),
            "torchscript_load_and_first_answer_ms": statistics.median(script_ms),
            "torch_export_load_and_first_answer_ms": statistics.median(torch_export_ms),
            "artifact_bytes_export": len(artifact), "artifact_bytes_torchscript": len(scripted)}


def main() -> dict:
    data = churn.generate(CUSTOMERS, seed=0)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW)
    frame = frame[frame["activity__event_timestamp"].notna()].reset_index(drop=True)
    options = MlpOptions(epochs=EPOCHS)
    warm_up = options.model_copy(update={"epochs": 1})
    plain_loop(frame, warm_up, 1)
    loopml_loop(frame, warm_up, 1)
    plain, ours, exports, ratios = [], [], [], []
    artifact = b""
    for i in range(REPEATS):  # each repetition is a pair, run back to back in alternating order
        pair: dict[str, float] = {}
        for kind in (("plain", "loopml") if i % 2 == 0 else ("loopml", "plain")):
            if kind == "plain":
                pair["plain"] = plain_loop(frame, options, 7)
            else:
                total, export, artifact = loopml_loop(frame, options, 7)
                pair["loopml"], pair["export"] = total, export
        plain.append(pair["plain"])
        ours.append(pair["loopml"])
        exports.append(pair["export"])
        ratios.append(((pair["loopml"] - pair["export"]) / pair["plain"], pair["loopml"] / pair["plain"]))
    p, o, e = statistics.median(plain), statistics.median(ours), statistics.median(exports)
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads(),
                    "platform": platform.platform()},
        "rows": len(frame), "epochs": EPOCHS, "repeats": REPEATS,
        "plain_pytorch_seconds": p, "loopml_seconds": o, "loopml_export_seconds": e,
        # the median of each pair's ratio: a pair shares the machine's load at that moment
        "loop_overhead_excluding_export": statistics.median(r[0] for r in ratios) - 1,
        "overhead_including_export": statistics.median(r[1] for r in ratios) - 1,
        **load_times(artifact),
    }
    out = Path(__file__).parent / "results" / "training.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
