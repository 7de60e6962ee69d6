"""The prediction record: one line of the prediction log, built by every writer the same way.

Writers (the built-in server's core, the TorchServe handler inside TorchServe's workers, loopml's
router in front of TorchServe) build records only through :func:`answered` and :func:`failed`;
readers (the monitor's window, the canary judge, live performance) accept a line only when
:func:`parse` can read it as a record. The fields::

    ts            unix seconds the answer was given
    request_id    the client's X-Request-ID, else the server's own id (may be None)
    version       the model version that answered
    inputs        the features of the row, as the model took them      (answered rows)
    output        score or value; the class for multiclass              (answered rows)
    probabilities class probabilities                                  (multiclass)
    latency_ms    the model's time per row
    entity        the row's entity id, when the request named one
    unknown       categorical features whose value training never saw
    shadow        true for a mirrored copy whose answer no client saw
    primary_version, primary_output   what production answered to that copy (shadow rows)
    error         why the model did not answer (no inputs or output then)
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict


class PredictionRecord(TypedDict):
    ts: float
    request_id: str | None
    version: int
    inputs: NotRequired[dict[str, Any]]
    output: NotRequired[Any]
    probabilities: NotRequired[list[float]]
    latency_ms: NotRequired[float]
    entity: NotRequired[Any]
    unknown: NotRequired[list[str]]
    shadow: NotRequired[bool]
    primary_version: NotRequired[int | None]
    primary_output: NotRequired[Any]
    error: NotRequired[str]


def outputs_of(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-row ``output`` fields of an answer: the score or value, or the class and probabilities."""
    if "probabilities" in answer:
        return [{"output": c, "probabilities": p} for c, p in zip(answer["predictions"], answer["probabilities"],
                                                                  strict=True)]
    return [{"output": v} for v in answer["predictions"]]


def answer_json(body: Mapping[str, Any]) -> bytes | None:
    """A prediction response's JSON bytes with orjson (what Starlette's JSONResponse writes, faster),
    or None when the standard path must render it: no orjson, or a non-finite number, which
    JSONResponse refuses where orjson would write null."""
    dumps = _fast_dumps()
    if dumps is None or not (finite(body.get("predictions")) and finite(body.get("probabilities"))):
        return None
    return dumps(body)


def answered(*, ts: float, version: int, request_id: str | None, features: Sequence[str],
             rows: Sequence[Mapping[str, Any]], answer: Mapping[str, Any], latency_ms: float,
             entity: str | None = None, unknown: Sequence[Sequence[str]] | None = None, shadow: bool = False,
             primary_version: int | None = None,
             primary_outputs: Sequence[Any] | None = None) -> list[PredictionRecord]:
    """The records of rows a model answered (one per row). ``shadow`` marks a mirrored copy of a
    request that ``primary_version`` answered for the client (``primary_outputs``: what it said)."""
    records: list[PredictionRecord] = []
    names = set(features)
    for i, (row, out) in enumerate(zip(rows, outputs_of(answer), strict=True)):
        # A row of exactly the features (the common case: validated, nothing else sent) is logged as
        # it is; the serving core never changes a row after answering it.
        inputs = row if row.keys() == names else {k: row[k] for k in features}
        record: dict[str, Any] = {"ts": ts, "request_id": request_id, "version": version,
                                  "inputs": inputs, **out, "latency_ms": latency_ms}
        if entity and row.get(entity) is not None:
            record["entity"] = row[entity]
        if unknown and unknown[i]:
            record["unknown"] = list(unknown[i])
        if shadow:
            record["shadow"] = True
            record["primary_version"] = primary_version
            record["primary_output"] = primary_outputs[i] if primary_outputs and i < len(primary_outputs) else None
        records.append(record)  # type: ignore[arg-type]
    return records


def failed(*, ts: float, version: int, request_id: str | None, rows: int, error: str,
           shadow: bool = False) -> list[PredictionRecord]:
    """The records of ``rows`` rows the model did not answer (valid input; the model or its server failed)."""
    record: dict[str, Any] = {"ts": ts, "request_id": request_id, "version": version, "error": error}
    if shadow:
        record["shadow"] = True
    return [dict(record) for _ in range(rows)]  # type: ignore[misc]


_LINE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps with options builds one per call


@functools.cache
def _fast_dumps() -> Callable[[Any], bytes] | None:
    """orjson's ``dumps`` when installed (Prefect depends on it): the same compact lines ~13x faster."""
    try:
        import orjson
    except ImportError:
        return None
    return orjson.dumps


def finite(value: Any) -> bool:
    """No NaN or infinity in a float or a (nested) list of them."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def encode(records: Iterable[PredictionRecord]) -> bytes:
    """Complete compact JSON lines, ready to append in one write.

    orjson writes what the standard encoder writes for these records, except that it turns a NaN or
    an infinity into ``null``; the rare record holding one in its output (a broken model) therefore
    goes through the standard encoder, so readers see the same value either way.
    """
    dumps = _fast_dumps()
    if dumps is None:
        return "".join([_LINE(r) + "\n" for r in records]).encode()
    out = bytearray()
    for r in records:
        if finite(r.get("output")) and finite(r.get("probabilities")) and finite(r.get("primary_output")):
            try:
                out += dumps(r)
            except TypeError:  # a type orjson refuses (orjson.JSONEncodeError is a TypeError)
                out += _LINE(r).encode()
        else:
            out += _LINE(r).encode()
        out += b"\n"
    return bytes(out)


def parse(value: Any) -> PredictionRecord | None:
    """``value`` as a record, or None when it is not one (a foreign or hand-edited line): a version,
    a time, and either an error or inputs with a numeric or text output."""
    if not isinstance(value, dict):
        return None
    try:
        int(value["version"])
        float(value.get("ts", 0.0))
        if "error" in value:
            return value  # type: ignore[return-value]
        output = value["output"]
        if not isinstance(output, str):
            float(output)
        float(value.get("latency_ms", 0.0))
    except (KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value.get("inputs"), dict) else None  # type: ignore[return-value]
