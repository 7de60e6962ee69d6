"""Open Inference Protocol v2 (KServe, Triton clients): tensors in, tensors out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from loopml.artifacts import Signature
from loopml.serving.requests import RequestError, short

_OIP_NUMERIC = {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def oip_rows(body: Any, sig: Signature, max_rows: int) -> tuple[list[dict[str, Any]], str | None]:
    """An OIP v2 infer request (one tensor per feature) -> JSON rows, and the request id."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError(422, 'body must be {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict):
            raise RequestError(422, f"inputs[{i}] must be an object")
        name, dtype, data = tensor.get("name"), tensor.get("datatype"), tensor.get("data")
        if name not in sig.features:
            raise RequestError(422, f"inputs[{i}].name: {short(name)} is not an input; the model takes "
                                    + ", ".join(sig.features))
        if not isinstance(data, list):
            raise RequestError(422, f"inputs[{i}] ({name}).data must be a list (binary tensors are not supported)")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not shape or any(not isinstance(s, int) or s < 0 for s in shape):
            raise RequestError(422, f"inputs[{i}] ({name}).shape must be a list of non-negative integers")
        if math.prod(shape) != len(data) or (len(shape) > 1 and any(s != 1 for s in shape[1:])):
            raise RequestError(422, f"inputs[{i}] ({name}): shape {shape} does not fit {len(data)} values; "
                                    "use [n] or [n, 1]")
        if not isinstance(dtype, str):
            raise RequestError(422, f"inputs[{i}] ({name}).datatype must be a string such as "
                                    f"{'FP32' if name in sig.numeric else 'BYTES'}, got {short(dtype)}")
        wants_number = name in sig.numeric
        if wants_number and dtype not in _OIP_NUMERIC:
            raise RequestError(422, f"inputs[{i}] ({name}).datatype {short(dtype)}: a numeric type is required")
        if not wants_number and dtype != "BYTES":
            raise RequestError(422, f"inputs[{i}] ({name}).datatype {short(dtype)}: BYTES is required")
        columns[name] = data
    missing = [f for f in sig.features if f not in columns]
    if missing:
        raise RequestError(422, f"inputs lack {', '.join(missing)}")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise RequestError(422, "all inputs must have the same number of rows")
    n = lengths.pop()
    if n == 0 or n > max_rows:
        raise RequestError(422, f"inputs have {n} rows; 1 to {max_rows} per request")
    rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    request_id = body.get("id") if isinstance(body.get("id"), str) else None
    return {"rows": rows}, request_id  # type: ignore[return-value]


def oip_outputs(answer: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    if "probabilities" in answer:
        k = len(answer["classes"])
        return [{"name": "label", "datatype": "BYTES", "shape": [n], "data": answer["predictions"]},
                {"name": "probabilities", "datatype": "FP32", "shape": [n, k],
                 "data": [p for row in answer["probabilities"] for p in row]}]
    return [{"name": "predictions", "datatype": "FP32", "shape": [n], "data": answer["predictions"]}]


def oip_model_metadata(name: str, versions: Sequence[int], sig: Signature) -> dict[str, Any]:
    inputs = [{"name": f, "datatype": "FP32", "shape": [-1]} for f in sig.numeric]
    inputs += [{"name": f, "datatype": "BYTES", "shape": [-1]} for f in sig.categorical]
    outputs = ([{"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(sig.classes)]}]
               if sig.task == "multiclass" else [{"name": "predictions", "datatype": "FP32", "shape": [-1]}])
    return {"name": name, "versions": [str(v) for v in versions], "platform": "loopml_torch_export",
            "inputs": inputs, "outputs": outputs, "parameters": {"task": sig.task, "classes": list(sig.classes)}}
