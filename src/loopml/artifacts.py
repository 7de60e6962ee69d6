"""Model artifacts: ``torch.export`` programs with a JSON signature, and the one loader for them.

An artifact is one PT2 archive (``torch.export.save``) holding:

* the exported program ``forward(numeric, codes)``: ``numeric`` float32 ``[n, n_numeric]`` of raw
  values, ``codes`` int64 ``[n, n_categorical]`` of vocabulary indices (0 = unknown). Scaling,
  the team's network and the output head (sigmoid, softmax, target de-standardisation) are inside
  the program, so a score needs nothing else;
* ``extra/loopml_signature.json``: feature names and kinds, vocabularies, task and classes. The
  vocabulary lookup (string -> index) is data, applied by :class:`Predictor` before the program.

Loading never unpickles and never imports user code: the archive is checked first (every weight and
constant stored as raw bytes, no custom or opaque objects, sample inputs readable by torch's
``weights_only`` loader). Its graph is then run directly by :class:`~loopml.aten_program.AtenProgram`
(ATen operators only, ~1.5 ms to load instead of ~40 ms); a graph outside that runner's subset is
handed to ``torch.export.load``. Artifacts of loopml 0.1 (TorchScript with the signature as an extra
file) still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml.aten_program import AtenProgram, UnsupportedProgram
from loopml.errors import DataValidationError, LoopmlError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from loopml.tasks import TaskKind

SIGNATURE_FILE = "loopml_signature.json"
FORMAT = "loopml.export/1"


class ArtifactError(LoopmlError):
    """An artifact that loopml refuses to load (unknown format, or parts that would need pickle)."""


@dataclass(frozen=True)
class Signature:
    """What a model expects and returns: feature names, kinds, vocabularies, task and classes."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    vocabularies: Mapping[str, list[str]]
    task: TaskKind = "binary"
    classes: tuple[str, ...] = ("0", "1")
    format: str = FORMAT
    baseline: Mapping[str, Any] = field(default_factory=dict)  # a typical training row: explanations start here
    integer: tuple[str, ...] = ()  # numeric features declared ``int`` in their dataset (MLflow types them ``long``)
    _lookups: tuple[dict[str, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        lookups = tuple({w: i + 1 for i, w in enumerate(self.vocabularies.get(c, []))} for c in self.categorical)
        object.__setattr__(self, "_lookups", lookups)

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Codes per categorical column, the reserved 0 (unknown) included: size an embedding by it."""
        return tuple(len(self.vocabularies.get(c, [])) + 1 for c in self.categorical)

    @property
    def n_outputs(self) -> int:
        """Width of the network's last layer: 1, or one logit per class for multiclass."""
        return len(self.classes) if self.task == "multiclass" else 1

    def to_json(self) -> str:
        raw = {"format": self.format, "numeric": list(self.numeric), "categorical": list(self.categorical),
               "vocabularies": dict(self.vocabularies), "task": self.task, "classes": list(self.classes)}
        if self.baseline:
            raw["baseline"] = dict(self.baseline)
        if self.integer:
            raw["integer"] = list(self.integer)
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        raw = json.loads(text)
        task = raw.get("task", "binary")
        return cls(tuple(raw["numeric"]), tuple(raw["categorical"]), raw["vocabularies"], task,
                   tuple(raw.get("classes", ("0", "1") if task == "binary" else ())),
                   raw.get("format", "loopml.torchscript/0"), dict(raw.get("baseline") or {}),
                   tuple(raw.get("integer") or ()))

    def with_baseline(self, numeric: np.ndarray, codes: np.ndarray) -> Signature:
        """This signature with a typical training row (each number's mean, each category's most
        frequent value): where per-request explanations measure changes from."""
        row: dict[str, Any] = {n: float(v) for n, v in zip(self.numeric, numeric.mean(axis=0), strict=True)} \
            if len(numeric) else {}
        for j, name in enumerate(self.categorical):
            counts = np.bincount(codes[:, j], minlength=1) if len(codes) else np.zeros(1, dtype=np.int64)
            counts[0] = 0  # unknown is not a value
            vocabulary = self.vocabularies.get(name, [])
            if counts.any() and int(counts.argmax()) - 1 < len(vocabulary):
                row[name] = vocabulary[int(counts.argmax()) - 1]
        return dataclasses.replace(self, baseline=row)

    # ------------------------------------------------------------ encoding
    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """JSON-like rows -> (numeric float32 [n, k], codes int64 [n, c]). Missing numbers become 0."""
        numeric = np.zeros((len(rows), len(self.numeric)), dtype=np.float32)
        codes = np.zeros((len(rows), len(self.categorical)), dtype=np.int64)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.numeric):
                value = row.get(name)
                if value is not None and value == value:
                    numeric[i, j] = value
            for j, lookup in enumerate(self._lookups):
                value = row.get(self.categorical[j])
                codes[i, j] = lookup.get(value if isinstance(value, str) else _as_text(value), 0)
        return numeric, codes

    def encode_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """A DataFrame -> (numeric float32, codes int64); raises naming a missing column."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise DataValidationError(f"input lacks feature column(s) {missing}", column=missing[0])
        numeric = frame[list(self.numeric)].to_numpy(dtype=np.float32, na_value=np.nan)
        numeric = np.nan_to_num(numeric, nan=0.0).reshape(len(frame), len(self.numeric))
        codes = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, (name, lookup) in enumerate(zip(self.categorical, self._lookups, strict=True)):
            texts = frame[name].astype("string").fillna("").to_numpy(dtype=object)
            codes[:, j] = [lookup.get(t, 0) for t in texts]
        return np.ascontiguousarray(numeric), codes

    def raw_categoricals(self, frame: pd.DataFrame) -> list[list[str]]:
        cats = frame[list(self.categorical)].astype("string").fillna("").to_numpy().tolist()
        return [[str(v) for v in row] for row in cats]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------- writing
def export_artifact(program_module: torch.nn.Module, signature: Signature) -> bytes:
    """Export ``program_module.forward(numeric, codes)`` with a dynamic batch size, plus signature."""
    import torch

    module = program_module.eval()
    n = 3  # not 0 or 1: torch.export would specialise the batch dimension on those
    example = (torch.zeros(n, len(signature.numeric)), torch.zeros(n, len(signature.categorical), dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}), strict=False)
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={SIGNATURE_FILE: signature.to_json()})
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- loading
def _check_archive(archive: zipfile.ZipFile) -> None:
    """Refuse PT2 archives with parts that ``torch.export.load`` would unpickle."""
    import torch

    names = archive.namelist()
    for name in names:
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            config = json.loads(archive.read(name)).get("config", {})
            for key, meta in config.items():
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or not path.startswith(("weight_", "tensor_")):
                    raise ArtifactError(f"artifact refused: {key!r} in {name} is stored as a pickled "
                                        "object; loopml loads raw tensors only")
        elif name.endswith(".pt") and ("/data/weights/" in name or "/data/constants/" in name):
            raise ArtifactError(f"artifact refused: legacy pickled payload {name}")
        elif "/data/sample_inputs/" in name:
            try:  # torch's restricted unpickler: tensors and containers only, never code
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as exc:
                raise ArtifactError(f"artifact refused: sample inputs {name} need a full unpickler "
                                    f"({type(exc).__name__})") from None


def _without_input_checks(module: Any) -> Any:
    """Drop the exported module's per-call input-constraint hook (~80 µs of a ~300 µs call).

    loopml builds every input itself (:meth:`Signature.encode_rows`): float32 ``[n, k]`` and int64
    ``[n, c]`` with ``n >= 1``, exactly the shapes the program was exported for.
    """
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)
    return module


class Predictor:
    """A loaded artifact: scores JSON rows or DataFrames. Thread-safe for inference."""

    def __init__(self, module: Any, signature: Signature, *, legacy: bool = False) -> None:
        self.module = module
        self.signature = signature
        self.legacy = legacy

    @classmethod
    def from_bytes(cls, data: bytes) -> Predictor:
        import torch

        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise ArtifactError("not a loopml model artifact (expected a torch.export PT2 archive)") from None
        with archive:
            names = archive.namelist()
            signatures = [n for n in names if n.endswith("extra/" + SIGNATURE_FILE)]
            if not signatures:
                raise ArtifactError(f"not a loopml model artifact: no {SIGNATURE_FILE} inside")
            signature = Signature.from_json(archive.read(signatures[0]).decode())
            if any("/models/" in n for n in names):
                _check_archive(archive)
                try:
                    return cls(AtenProgram.from_archive(archive), signature)
                except UnsupportedProgram:
                    pass  # a part the direct runner does not read: torch's own loader handles it
                program = torch.export.load(io.BytesIO(data))
                return cls(_without_input_checks(program.module()), signature)
        with warnings.catch_warnings():  # loopml 0.1: TorchScript with the signature as an extra file
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        return cls(module.eval(), signature, legacy=True)

    def _run(self, numeric: np.ndarray, codes: np.ndarray, raw_cats: list[list[str]] | None) -> np.ndarray:
        import torch

        if type(self.module) is AtenProgram:  # no tensor of its requires grad: autograd records nothing
            return self.module(torch.from_numpy(numeric), torch.from_numpy(codes)).numpy()
        with torch.inference_mode():
            if self.legacy:
                assert raw_cats is not None
                return self.module(torch.from_numpy(numeric), raw_cats).numpy()
            return self.module(torch.from_numpy(numeric), torch.from_numpy(codes)).numpy()

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        numeric, codes = self.signature.encode_frame(frame)
        raw = self.signature.raw_categoricals(frame) if self.legacy else None
        return self._run(numeric, codes, raw)

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Score JSON-like rows without building a DataFrame (the serving hot path)."""
        numeric, codes = self.signature.encode_rows(rows)
        raw = ([[_as_text(r.get(c)) for c in self.signature.categorical] for r in rows]
               if self.legacy else None)
        return self._run(numeric, codes, raw)

    def answer(self, scores: np.ndarray) -> dict[str, Any]:
        """JSON fields of a prediction response for these scores (task-shaped)."""
        sig = self.signature
        if sig.task == "multiclass":
            idx = np.argmax(scores, axis=1)
            return {"predictions": [sig.classes[i] for i in idx], "probabilities": scores.tolist(),
                    "classes": list(sig.classes)}
        return {"predictions": scores.tolist()}
