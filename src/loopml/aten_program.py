"""Run a loopml artifact's exported graph directly: ATen operators from the archive's JSON, no pickle.

``torch.export.load`` rebuilds a whole ``ExportedProgram`` before anything can be scored: the schema
dataclasses through ``typing.get_type_hints`` (uncached, about 30% of the time), a fake tensor with
symbolic shapes for every value (sympy parses each size), then an unlifted ``GraphModule`` whose
Python code is generated and compiled. For a twelve-operator MLP that is ~40 ms, ten times a
TorchScript load, and every server start, canary switch and batch job pays it.

Serving needs none of it. The archive's ``models/model.json`` lists the graph's nodes in execution
order, each an ATen operator overload (``torch.ops.aten.linear.default``) with its arguments; the
weights are raw little-endian bytes described by ``model_weights_config.json``. :class:`AtenProgram`
reads exactly that and calls the same operators in the same order, so it answers bit for bit what
the program loaded by torch answers (the tests compare both on every trainer).

It reads a deliberately small subset and says so: anything else (another schema major, another
operator-set version, a non-ATen target such as a higher-order or custom operator, a symbolic
expression, a custom object, a mutated buffer, several outputs) raises :class:`UnsupportedProgram`
and :class:`~loopml.artifacts.Predictor` loads the archive with ``torch.export.load`` as before.
Nothing here weakens the archive check, which runs first either way; this runner is stricter than
torch's loader, since it can only ever call ``torch.ops.aten`` overloads.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SCHEMA_MAJOR = 8
"""The ``torch.export`` serialisation schema major version this runner reads (torch 2.13: 8.20)."""

_SCALARS = ("as_int", "as_float", "as_bool", "as_string")
_SCALAR_LISTS = ("as_ints", "as_floats", "as_bools", "as_strings")


@functools.cache
def _enums() -> dict[str, dict[int, Any]]:
    """torch/_export/serde/schema.py's ScalarType, Layout and MemoryFormat (stable within a major)."""
    import torch

    return {
        "as_scalar_type": {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64,
                           6: torch.float16, 7: torch.float32, 8: torch.float64, 9: torch.complex32,
                           10: torch.complex64, 11: torch.complex128, 12: torch.bool, 13: torch.bfloat16,
                           28: torch.uint16, 34: torch.uint32, 35: torch.uint64},
        "as_layout": {7: torch.strided},
        "as_memory_format": {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d,
                             4: torch.preserve_format},
    }


class UnsupportedProgram(Exception):
    """The archive uses a part this runner does not read; load it with ``torch.export.load``."""


@dataclass(frozen=True)
class _Ref:
    """A value produced earlier in the graph (an input, a weight or a node's output), by name."""

    name: str


@dataclass(frozen=True)
class _RefList:
    """A list argument naming earlier values; ``None`` entries stay ``None`` (optional tensors)."""

    names: tuple[str | None, ...]


@dataclass(frozen=True)
class _MixedList:
    """A list of sizes mixing constants and earlier symbolic values (``[s0, 4]``)."""

    items: tuple[Any, ...]


@dataclass(frozen=True)
class _Step:
    op: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    outputs: tuple[str | None, ...]
    """One name: the op returns one value. Several: it returns a sequence, bound in order."""
    many: bool


def _resolve(value: Any, env: dict[str, Any]) -> Any:
    kind = type(value)
    if kind is _Ref:
        return env[value.name]
    if kind is _RefList:
        return [None if n is None else env[n] for n in value.names]
    if kind is _MixedList:
        return [env[v.name] if type(v) is _Ref else v for v in value.items]
    return value


class AtenProgram:
    """``program(numeric, codes) -> tensor``: the exported graph, run operator by operator.

    Weights are bound once at load; a call only resolves names and calls ATen overloads, so it is
    thread-safe (no state is written) and needs no autograd (callers run it in inference mode).
    """

    def __init__(self, steps: Sequence[_Step], weights: Mapping[str, torch.Tensor],
                 user_inputs: Sequence[str], output: str) -> None:
        self._steps = tuple(steps)
        self._weights = dict(weights)
        self._user_inputs = tuple(user_inputs)
        self._output = output

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self._user_inputs):
            raise TypeError(f"the program takes {len(self._user_inputs)} inputs, got {len(inputs)}")
        env = dict(self._weights)
        env.update(zip(self._user_inputs, inputs, strict=True))
        for step in self._steps:
            args = [_resolve(a, env) for a in step.args]
            kwargs = {k: _resolve(v, env) for k, v in step.kwargs.items()} if step.kwargs else {}
            out = step.op(*args, **kwargs)
            if step.many:
                for name, value in zip(step.outputs, out, strict=True):
                    if name is not None:
                        env[name] = value
            elif step.outputs[0] is not None:
                env[step.outputs[0]] = out
        return env[self._output]

    @classmethod
    def from_archive(cls, data: bytes | zipfile.ZipFile) -> AtenProgram:
        """Read the one program of a PT2 archive; :class:`UnsupportedProgram` when outside the subset."""
        archive = data if isinstance(data, zipfile.ZipFile) else zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
        models = [n for n in names if n.endswith(".json") and n.rsplit("/", 2)[-2:-1] == ["models"]]
        if len(models) != 1:
            raise UnsupportedProgram(f"{len(models)} programs in the archive, this runner reads one")
        root = models[0].rsplit("/models/", 1)[0]
        model = models[0].rsplit("/", 1)[1][: -len(".json")]
        byteorder = f"{root}/byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise UnsupportedProgram("weights are not little-endian")
        program = json.loads(archive.read(models[0]))
        _check_versions(program)
        payloads = _payloads(archive, root, model, names)
        module = program["graph_module"]
        weights, user_inputs = _bind_inputs(module["signature"]["input_specs"], payloads)
        output = _single_output(module["signature"]["output_specs"])
        steps = [_step(node) for node in module["graph"]["nodes"]]
        return cls(steps, weights, user_inputs, output)


def _check_versions(program: Mapping[str, Any]) -> None:
    import torch

    major = program.get("schema_version", {}).get("major")
    if major != SCHEMA_MAJOR:
        raise UnsupportedProgram(f"schema major {major}, this runner reads {SCHEMA_MAJOR}")
    opsets = program.get("opset_version", {})
    if set(opsets) - {"aten"} or opsets.get("aten") != torch._C._get_max_operator_version():
        raise UnsupportedProgram(f"operator sets {opsets} need torch's upgraders")


def _payloads(archive: zipfile.ZipFile, root: str, model: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Every weight and constant by its fully qualified name, from raw bytes (aliasing kept)."""
    import torch

    dtypes = _enums()["as_scalar_type"]
    out: dict[str, torch.Tensor] = {}
    for kind in ("weights", "constants"):
        config_name = f"{root}/data/{kind}/{model}_{kind}_config.json"
        if config_name not in names:
            raise UnsupportedProgram(f"no {kind} config")
        flat: dict[str, torch.Tensor] = {}
        for fqn, meta in json.loads(archive.read(config_name)).get("config", {}).items():
            tensor_meta = meta.get("tensor_meta")
            if meta.get("use_pickle") or tensor_meta is None:
                raise UnsupportedProgram(f"{fqn} is not a raw tensor")
            dtype = dtypes.get(tensor_meta["dtype"])
            if dtype is None or tensor_meta.get("device", {}).get("type") != "cpu" \
                    or tensor_meta.get("layout", 7) != 7:
                raise UnsupportedProgram(f"{fqn}: dtype, device or layout outside the subset")
            path = meta["path_name"]
            if path not in flat:
                raw = bytearray(archive.read(f"{root}/data/{kind}/{path}"))
                flat[path] = (torch.frombuffer(raw, dtype=dtype) if raw else
                              torch.zeros(_ints(tensor_meta["sizes"]), dtype=dtype).reshape(-1))
            out[fqn] = torch.as_strided(flat[path], _ints(tensor_meta["sizes"]), _ints(tensor_meta["strides"]),
                                        _ints([tensor_meta["storage_offset"]])[0])
    return out


def _ints(values: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    if any("as_int" not in v for v in values):
        raise UnsupportedProgram("a symbolic size in a stored tensor")
    return tuple(int(v["as_int"]) for v in values)


def _bind_inputs(specs: Sequence[Mapping[str, Any]],
                 payloads: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    weights: dict[str, torch.Tensor] = {}
    user_inputs: list[str] = []
    for spec in specs:
        ((kind, body),) = spec.items()
        if kind == "user_input" and "as_tensor" in body["arg"]:
            user_inputs.append(body["arg"]["as_tensor"]["name"])
            continue
        fqn = {"parameter": "parameter_name", "buffer": "buffer_name",
               "tensor_constant": "tensor_constant_name"}.get(kind)
        if fqn is None or body[fqn] not in payloads:
            raise UnsupportedProgram(f"input {kind} {body.get(fqn or '', '')!r}")
        weights[body["arg"]["name"]] = payloads[body[fqn]]
    return weights, user_inputs


def _single_output(specs: Sequence[Mapping[str, Any]]) -> str:
    if len(specs) != 1 or "user_output" not in specs[0] or "as_tensor" not in specs[0]["user_output"]["arg"]:
        raise UnsupportedProgram("the program returns something other than one tensor")
    return str(specs[0]["user_output"]["arg"]["as_tensor"]["name"])


def _operator(target: str) -> Callable[..., Any]:
    import torch

    prefix = "torch.ops.aten."
    parts = target[len(prefix):].split(".") if target.startswith(prefix) else []
    if len(parts) != 2:
        raise UnsupportedProgram(f"operator {target!r} is not an ATen overload")
    packet = getattr(torch.ops.aten, parts[0], None)
    overload = getattr(packet, parts[1], None) if packet is not None else None
    if not isinstance(overload, torch._ops.OpOverload):
        raise UnsupportedProgram(f"operator {target!r} is unknown to this torch")
    return overload


def _step(node: Mapping[str, Any]) -> _Step:
    op = _operator(node["target"])
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for named in node["inputs"]:
        value = _argument(named["arg"])
        if named.get("kind") == 1:
            if kwargs:
                raise UnsupportedProgram("a positional argument after a keyword one")
            args.append(value)
        elif named.get("kind") == 2:
            kwargs[named["name"]] = value
        else:
            raise UnsupportedProgram(f"argument {named.get('name')!r} has no kind (an older archive)")
    outputs = node["outputs"]
    if len(outputs) == 1 and "as_tensors" in outputs[0]:
        return _Step(op, tuple(args), kwargs, tuple(t["name"] for t in outputs[0]["as_tensors"]), True)
    names = tuple(_output_name(o) for o in outputs)
    return _Step(op, tuple(args), kwargs, names, len(names) != 1)


def _output_name(output: Mapping[str, Any]) -> str | None:
    ((kind, body),) = output.items()
    if kind == "as_tensor":
        return str(body["name"])
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool") and "as_name" in body:
        return str(body["as_name"])
    if kind == "as_none":
        return None
    raise UnsupportedProgram(f"an output of kind {kind}")


def _argument(arg: Mapping[str, Any]) -> Any:
    ((kind, body),) = arg.items()
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return _Ref(body["name"])
    if kind in _SCALARS:
        return body
    if kind in _SCALAR_LISTS:
        return list(body)
    if kind == "as_tensors":
        return _RefList(tuple(t["name"] for t in body))
    if kind == "as_optional_tensors":
        return _RefList(tuple(t["as_tensor"]["name"] if "as_tensor" in t else _none(t) for t in body))
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        return _symbolic(body)
    if kind in ("as_sym_ints", "as_sym_floats", "as_sym_bools"):
        values = tuple(_symbolic(v) for v in body)
        return _MixedList(values) if any(type(v) is _Ref for v in values) else list(values)
    table = _enums().get(kind)
    if table is not None and body in table:
        return table[body]
    if kind == "as_device" and body.get("type") == "cpu" and body.get("index") is None:
        import torch

        return torch.device("cpu")
    raise UnsupportedProgram(f"an argument of kind {kind}")


def _none(entry: Mapping[str, Any]) -> None:
    if "as_none" not in entry:
        raise UnsupportedProgram(f"an optional tensor of kind {list(entry)}")
    return None


def _symbolic(body: Mapping[str, Any]) -> Any:
    ((kind, value),) = body.items()
    if kind == "as_name":
        return _Ref(value)
    if kind in ("as_int", "as_float", "as_bool"):
        return value
    raise UnsupportedProgram(f"a symbolic value of kind {kind}")
