"""Trainers: the ``trainer`` backend kind, its built-ins (``mlp``, ``torch-module``) and the loop.

A trainer turns point-in-time training rows into an exported artifact (:mod:`loopml.artifacts`).
Built-ins share one deterministic PyTorch loop (:func:`fit_network`); they differ in the network:

* ``mlp``: loopml's tabular MLP (one-hot categoricals, one hidden layer);
* ``torch-module``: a team's own ``nn.Module`` from a factory named by import path
  (``module = "mypkg.models:build"``). The factory receives the :class:`Signature` (feature names,
  ``cardinalities``, ``task``, ``n_outputs``) and returns a module whose
  ``forward(numeric, codes)`` takes standardised numerics (float32 ``[n, k]``) and category codes
  (int64 ``[n, c]``, 0 = unknown) and returns logits: ``[n]`` or ``[n, 1]`` for binary and
  regression, ``[n, n_classes]`` for multiclass. Loss, optimiser, epochs, early stopping and batch
  size are options; the output head (sigmoid, softmax, target scale) is added by loopml.

A trainer of one's own implements :class:`loopml.protocols.Trainer` (``name``, ``fingerprint()``,
``fit(request)``) and is declared by ``loopml_trainers`` or passed ad hoc:
``pipeline(config=..., trainer=MyTrainer())``. A plain factory works too:
``pipeline(config=..., trainer=build)`` trains ``build(signature)`` with the default loop options.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from loopml import tasks
from loopml.artifacts import Signature, export_artifact, sha256
from loopml.code_refs import code_fingerprint, import_factory
from loopml.errors import ConfigError, DataValidationError
from loopml.protocols import Trainer

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from loopml.tasks import TaskKind

EpochCallback = Callable[[int, int, dict[str, float]], None]
"""``on_epoch(epoch, total_epochs, metrics)``, called after each epoch (epoch counts from 1)."""


@dataclass(frozen=True)
class TrainRequest:
    """Everything a trainer gets: rows, what to predict, and where to report progress."""

    frame: pd.DataFrame
    label: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    task: TaskKind
    classes: tuple[str, ...]
    seed: int = 7
    on_epoch: EpochCallback | None = field(default=None, compare=False)
    integer: tuple[str, ...] = ()  # numeric features whose dataset declares them ``int``

    def signature(self) -> Signature:
        """The signature of a model trained on these rows (vocabularies from the training rows)."""
        vocabs = {c: sorted(self.frame[c].dropna().astype(str).unique().tolist()) for c in self.categorical}
        return Signature(self.numeric, self.categorical, vocabs, self.task, self.classes,
                         integer=tuple(c for c in self.numeric if c in self.integer))


@dataclass(frozen=True)
class TrainedModel:
    """A trainer's result: the exported artifact and the per-epoch history."""

    artifact: bytes
    sha256: str
    signature: Signature
    history: tuple[dict[str, float], ...]


# ---------------------------------------------------------------------------- options
class LoopOptions(BaseModel):
    """Options of loopml's training loop, shared by ``mlp`` and ``torch-module``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(default=25, ge=1, description="passes over the training rows")
    batch_size: int = Field(default=256, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    loss: Literal["auto", "bce", "cross_entropy", "mse", "huber", "l1"] = Field(
        default="auto", description="auto: bce (binary), cross_entropy (multiclass), mse (regression)")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="stop after this many epochs without a better validation loss; "
                                        "the best weights are kept")
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5,
                                       description="rows held out of training for early stopping")
    standardize_target: bool = Field(default=True, description="regression: train on a standardised "
                                                               "target; the artifact answers in the original unit")


class MlpOptions(LoopOptions):
    """The built-in tabular MLP."""

    hidden_units: int = Field(default=32, ge=1)


class TorchModuleOptions(LoopOptions):
    """A team's own ``nn.Module``."""

    module: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                        description="import path of the factory, 'package.module:function'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")


_LOSSES = {"binary": "bce", "multiclass": "cross_entropy", "regression": "mse"}
_ALLOWED_LOSSES = {"binary": {"bce"}, "multiclass": {"cross_entropy"}, "regression": {"mse", "huber", "l1"}}


# ---------------------------------------------------------------------------- networks
def _mlp_factory(hidden_units: int) -> Callable[[Signature], torch.nn.Module]:
    def build(sig: Signature) -> torch.nn.Module:
        import torch
        from torch import nn

        class TabularMLP(nn.Module):
            """One-hot categoricals next to standardised numerics, one hidden ReLU layer."""

            def __init__(self) -> None:
                super().__init__()
                for j, size in enumerate(sig.cardinalities):
                    self.register_buffer(f"onehot_{j}", torch.eye(size))
                self.n_cat = len(sig.cardinalities)
                width = len(sig.numeric) + sum(sig.cardinalities)
                self.net = nn.Sequential(nn.Linear(width, hidden_units), nn.ReLU(),
                                         nn.Linear(hidden_units, sig.n_outputs))

            def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
                parts = [numeric] + [getattr(self, f"onehot_{j}")[codes[:, j]] for j in range(self.n_cat)]
                return self.net(torch.cat(parts, dim=1))

        return TabularMLP()

    return build


# ---------------------------------------------------------------------------- the loop
def _program(net: torch.nn.Module, mean: np.ndarray, std: np.ndarray, task: TaskKind,
             y_mean: float, y_std: float) -> torch.nn.Module:
    """The exported program: scaling + the network + the task's output head."""
    import torch
    from torch import nn

    class LoopmlProgram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            out = self.net((numeric - self.mean) / self.std, codes)
            if task == "multiclass":
                return torch.softmax(out, dim=1)
            out = out.reshape(-1)
            if task == "binary":
                return torch.sigmoid(out)
            return out * y_std + y_mean

    return LoopmlProgram()


def _head(logits: torch.Tensor, task: TaskKind, y_mean: float, y_std: float) -> np.ndarray:
    import torch

    if task == "multiclass":
        return torch.softmax(logits, dim=1).numpy()
    flat = logits.reshape(-1)
    return (torch.sigmoid(flat) if task == "binary" else flat * y_std + y_mean).numpy()


def _check_output(net: torch.nn.Module, sig: Signature, n_numeric: int, origin: str) -> None:
    import torch

    numeric = torch.zeros(2, n_numeric)
    codes = torch.zeros(2, len(sig.categorical), dtype=torch.long)
    try:
        with torch.no_grad():
            out = net(numeric, codes)
    except Exception as exc:
        raise ConfigError(f"{origin}: the module fails on a batch of 2 rows "
                          f"(numeric [2, {n_numeric}], codes [2, {len(sig.categorical)}]): "
                          f"{type(exc).__name__}: {exc}") from None
    shape = tuple(getattr(out, "shape", ()))
    ok = (shape == (2, sig.n_outputs) if sig.task == "multiclass" else shape in {(2,), (2, 1)})
    if not ok:
        want = f"[n, {sig.n_outputs}]" if sig.task == "multiclass" else "[n] or [n, 1]"
        raise ConfigError(f"{origin}: the module returns shape {list(shape)} for 2 rows; task "
                          f"{sig.task!r} needs {want}")


def fit_network(build: Callable[[Signature], torch.nn.Module], request: TrainRequest, options: LoopOptions,
                origin: str = "trainer") -> TrainedModel:
    """Train ``build(signature)`` deterministically on CPU and export it with its signature.

    Deterministic algorithms are switched on for the fit only; the caller's setting is restored.
    """
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _fit(build, request, options, origin)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _fit(build: Callable[[Signature], torch.nn.Module], request: TrainRequest, options: LoopOptions,
         origin: str) -> TrainedModel:
    import torch

    torch.manual_seed(request.seed)
    sig = request.signature()
    loss_name = _LOSSES[sig.task] if options.loss == "auto" else options.loss
    if loss_name not in _ALLOWED_LOSSES[sig.task]:
        raise ConfigError(f"{origin}: loss {loss_name!r} does not fit task {sig.task!r}; choose one of: "
                          + ", ".join(sorted(_ALLOWED_LOSSES[sig.task])))
    numeric, codes = sig.encode_frame(request.frame)
    mean = numeric.mean(axis=0) if len(numeric) else np.zeros(len(sig.numeric))
    std = numeric.std(axis=0) + 1e-6 if len(numeric) else np.ones(len(sig.numeric))
    scaled = ((numeric - mean) / std).astype(np.float32)
    y_raw = tasks.encode_label(request.frame[request.label], sig.task, sig.classes)
    y_mean, y_std = 0.0, 1.0
    if sig.task == "regression" and options.standardize_target:
        y_mean, y_std = float(y_raw.mean()), float(y_raw.std() or 1.0)

    net = build(sig)
    if not isinstance(net, torch.nn.Module):
        raise ConfigError(f"{origin}: the factory returned a {type(net).__name__}, not a torch.nn.Module")
    _check_output(net, sig, len(sig.numeric), origin)

    x_num, x_cat = torch.from_numpy(scaled), torch.from_numpy(codes)
    if sig.task == "multiclass":
        y = torch.from_numpy(y_raw.astype(np.int64))
    else:
        y = torch.from_numpy(((y_raw - y_mean) / y_std).astype(np.float32))
    gen = torch.Generator().manual_seed(request.seed)
    n = len(y)
    order = torch.randperm(n, generator=gen)
    n_val = int(n * options.validation_fraction) if options.early_stopping_patience else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    loss_fn = {"bce": torch.nn.BCEWithLogitsLoss(), "cross_entropy": torch.nn.CrossEntropyLoss(),
               "mse": torch.nn.MSELoss(), "huber": torch.nn.HuberLoss(), "l1": torch.nn.L1Loss()}[loss_name]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[options.optimizer]
    opt = opt_cls(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    primary = tasks.primary_metric(sig.task)
    # The per-epoch metric on training rows uses a fixed sample, so its cost does not grow with the data.
    probe = (val_idx if n_val else train_idx[: min(len(train_idx), 2048)])

    def logits_of(idx: torch.Tensor) -> torch.Tensor:
        out = net(x_num[idx], x_cat[idx])
        return out if sig.task == "multiclass" else out.reshape(-1)

    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Any]] | None = None
    since_best = 0
    for epoch in range(1, options.epochs + 1):
        net.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for start in range(0, len(perm), options.batch_size):
            idx = perm[start:start + options.batch_size]
            opt.zero_grad()
            loss = loss_fn(logits_of(idx), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            probe_logits = logits_of(probe)
            probe_loss = float(loss_fn(probe_logits, y[probe]))
        prefix = "val" if n_val else "train"
        score = primary.compute(y_raw[probe.numpy()], _head(probe_logits, sig.task, y_mean, y_std))
        metrics = {"train_loss": total / max(len(perm), 1), f"{prefix}_{primary.name}": score}
        if n_val:
            metrics["val_loss"] = probe_loss
        history.append(metrics)
        if request.on_epoch is not None:
            request.on_epoch(epoch, options.epochs, metrics)
        if options.early_stopping_patience:
            if best is None or probe_loss < best[0]:
                best, since_best = (probe_loss, copy.deepcopy(net.state_dict())), 0
            else:
                since_best += 1
                if since_best >= options.early_stopping_patience:
                    break
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    sig = sig.with_baseline(numeric, codes)
    artifact = export_artifact(_program(net, mean, std, sig.task, y_mean, y_std), sig)
    return TrainedModel(artifact, sha256(artifact), sig, tuple(history))


# ---------------------------------------------------------------------------- trainers
class NetworkTrainer:
    """A trainer that runs loopml's loop over a network factory (``mlp``, ``torch-module``, ad hoc)."""

    def __init__(self, name: str, build: Callable[[Signature], torch.nn.Module], options: LoopOptions,
                 code: str, origin: str, extra_params: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.build = build
        self.options = options
        self._code = code
        self.origin = origin
        self._extra_params = dict(extra_params or {})

    def fingerprint(self) -> str:
        """Options and the code that defines the network: a change to either retrains."""
        opts = json.dumps(self.options.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(f"{self.name}\n{opts}\n{self._code}".encode()).hexdigest()

    def params(self) -> dict[str, Any]:
        """What the tracker and the registry record: trainer, its own options, the loop's options."""
        return {"trainer": self.name, **self._extra_params, **self.options.model_dump(mode="json")}

    def fit(self, request: TrainRequest) -> TrainedModel:
        return fit_network(self.build, request, self.options, self.origin)


def mlp_trainer(options: MlpOptions, ctx: Any = None) -> NetworkTrainer:
    loop_opts = LoopOptions(**options.model_dump(exclude={"hidden_units"}))
    return NetworkTrainer("mlp", _mlp_factory(options.hidden_units), loop_opts,
                          code_fingerprint(fit_network) + str(options.hidden_units), "trainer 'mlp'",
                          extra_params={"hidden_units": options.hidden_units})


def torch_module_trainer(options: TorchModuleOptions, ctx: Any = None) -> NetworkTrainer:
    factory = import_factory(options.module)
    kwargs = dict(options.kwargs)

    def build(sig: Signature) -> torch.nn.Module:
        return factory(sig, **kwargs)

    loop_opts = LoopOptions(**options.model_dump(exclude={"module", "kwargs"}))
    code = code_fingerprint(factory) + code_fingerprint(fit_network) + json.dumps(kwargs, sort_keys=True)
    return NetworkTrainer("torch-module", build, loop_opts, code, f"module {options.module!r}",
                          extra_params={"module": options.module, "kwargs": kwargs})


def ad_hoc_trainer(obj: Any, options: Mapping[str, Any] | None = None) -> Any:
    """A trainer object as given, or a plain factory ``build(signature) -> nn.Module`` wrapped."""
    if isinstance(obj, Trainer):
        return obj
    if callable(obj):
        name = getattr(obj, "__qualname__", type(obj).__name__)
        return NetworkTrainer("ad-hoc", obj, LoopOptions(**(options or {})), code_fingerprint(obj),
                              f"factory {name}")
    raise ConfigError(f"trainer must be a Trainer (name, fit, fingerprint) or a factory callable, got "
                      f"{type(obj).__name__}")


def check_request(request: TrainRequest) -> None:
    """Refuse what would fail half-way: too few rows, a label that does not fit the task."""
    if len(request.frame) < 2:
        raise DataValidationError(f"only {len(request.frame)} training row(s) after the point-in-time join; "
                                  "check the label and feature timestamps")
    tasks.check_label(request.frame[request.label], request.task, request.label)


def train_model(frame: pd.DataFrame, label: str, numeric: tuple[str, ...], categorical: tuple[str, ...], *,
                task: TaskKind = "binary", trainer: Any = None, seed: int = 7, **options: Any) -> TrainedModel:
    """Train outside a project, from Python: the MLP with ``options``, or ``trainer`` (object or factory)."""
    classes = tasks.check_label(frame[label], task, label)
    request = TrainRequest(frame, label, tuple(numeric), tuple(categorical), task, classes, seed=seed)
    check_request(request)
    chosen = mlp_trainer(MlpOptions(**options)) if trainer is None else ad_hoc_trainer(trainer, options)
    return chosen.fit(request)
