"""loopml's model server: an ASGI app (Starlette on uvicorn) with micro-batching and hard limits.

Routes (JSON everywhere, errors included):

* ``POST /predict`` ``{"rows": [{feature: value}, …]}`` -> ``{"model", "version", "predictions"}``
  (multiclass adds ``probabilities`` and ``classes``); rows holding only the entity id get their
  features from the online store.
* Open Inference Protocol v2 (KServe, Triton clients): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]`` (metadata), ``…/ready`` and
  ``POST …/infer`` with one input tensor per feature (FP32/INT64 for numbers, BYTES for categories).
* ``GET /metrics``: Prometheus text format (requests and errors by status, latency histogram,
  rows and prediction distribution per model version, unknown categories, batch sizes).
* ``GET /health`` and ``GET /metadata``: loopml's own status and signatures.

Every bad request is a 4xx that names the problem: 400 malformed JSON, NaN/Infinity, too deep;
401 missing token; 404 unknown route/model/version/entity; 405 wrong method; 408 body too slow;
411/413 length missing or too large (checked before reading); 415 not JSON; 422 fields that do
not fit the signature (missing, unknown, wrong type, out of float32 range, strings over the cap).
Headers must arrive within ``header_timeout`` and bodies within ``body_timeout``; connections are
capped (``max_connections``, 503 past it). Concurrent requests are scored together (dynamic
micro-batching: whatever is queued while a batch computes forms the next batch, no added wait).
Answers are logged off the request path (:mod:`loopml.predlog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import json
import logging
import math
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loopml.artifacts import Predictor, Signature
from loopml.errors import LoopmlError

log = logging.getLogger(__name__)

FLOAT32_MAX = 3.4028234663852886e38
DRAIN_LIMIT = 16 << 20
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_STRIP_STRINGS = re.compile(rb'"(?:\\.|[^"\\])*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\x02\x02")


class RequestError(Exception):
    """A client error: HTTP status and a message that names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerLimits:
    """What one request may be and how long it may take."""

    max_body_bytes: int = 1 << 20
    max_rows: int = 1000
    max_string_chars: int = 256
    max_json_depth: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Routing:
    """An immutable routing table, replaced whole on every change: a request takes one snapshot."""

    predictors: Mapping[int, Predictor]
    weights: Mapping[int, float]
    shadow: int | None = None  # gets a copy of every request; its answers are logged, never returned

    def pick(self, rng: random.Random) -> int:
        versions = [v for v, w in self.weights.items() if w > 0]
        if len(versions) == 1:
            return versions[0]
        return rng.choices(versions, weights=[self.weights[v] for v in versions])[0]


# ---------------------------------------------------------------------------- input checks
def _reject_constant(name: str) -> float:
    raise RequestError(400, f"JSON literal {name} is not allowed; send finite numbers only")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects, outside strings (vectorised; cheap on large bodies)."""
    skeleton = _STRIP_STRINGS.sub(b"", raw).translate(_BRACKETS)
    marks = np.frombuffer(skeleton, dtype=np.uint8)
    marks = marks[(marks == 1) | (marks == 2)]
    if not len(marks):
        return 0
    return int(np.cumsum(np.where(marks == 1, 1, -1)).max())


def parse_json(raw: bytes, max_depth: int) -> Any:
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        raise RequestError(400, f"JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, "JSON is nested too deeply") from None
    except ValueError as exc:  # includes integers longer than Python's digit limit
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def validate_rows(payload: Any, sig: Signature, *, max_rows: int, extra_allowed: Sequence[str] = (),
                  max_string_chars: int = 256) -> list[dict[str, Any]]:
    """Check a request body against the model signature; raise RequestError(422) naming the field."""
    if not isinstance(payload, dict) or "rows" not in payload:
        raise RequestError(422, 'body must be a JSON object {"rows": [{feature: value, ...}]}')
    rows = payload["rows"]
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, "rows must be a non-empty list of objects")
    if len(rows) > max_rows:
        raise RequestError(422, f"rows has {len(rows)} items; at most {max_rows} per request")
    allowed = set(sig.numeric) | set(sig.categorical) | set(extra_allowed)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{i}] must be an object, got {type(row).__name__}")
        for name in sig.numeric:
            if name not in row:
                raise RequestError(422, f"rows[{i}].{name}: missing (a number is required)")
            value = row[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(422, f"rows[{i}].{name}: expected a number, got {_short(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise RequestError(422, f"rows[{i}].{name}: must be finite")
            if abs(value) > FLOAT32_MAX:
                raise RequestError(422, f"rows[{i}].{name}: {_short(value)} is outside the float32 range")
        for name in sig.categorical:
            if name not in row:
                raise RequestError(422, f"rows[{i}].{name}: missing (a string is required)")
            value = row[name]
            if not isinstance(value, str):
                raise RequestError(422, f"rows[{i}].{name}: expected a string, got {_short(value)}")
            if len(value) > max_string_chars:
                raise RequestError(422, f"rows[{i}].{name}: {len(value)} characters; at most {max_string_chars}")
        unknown = [k for k in row if k not in allowed]
        if unknown:
            first = str(sorted(unknown)[0])
            first = first if len(first) <= 64 else first[:64] + "…"
            raise RequestError(422, f"rows[{i}].{first}: unknown field; the model takes "
                                    f"{', '.join(sorted(set(sig.numeric) | set(sig.categorical)))}")
        for name in extra_allowed:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)
                                      or len(str(value)) > max_string_chars):
                raise RequestError(422, f"rows[{i}].{name}: expected an id (integer or short string)")
    return rows


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) or len(value) <= limit else json.dumps(value[:limit])
    return text if len(text) <= limit + 2 else text[:limit] + "…"


def log_outputs(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-row ``output`` fields of the prediction log: the score/value, or the class + probabilities."""
    if "probabilities" in answer:
        return [{"output": c, "probabilities": p} for c, p in zip(answer["predictions"], answer["probabilities"],
                                                                  strict=True)]
    return [{"output": v} for v in answer["predictions"]]


# ---------------------------------------------------------------------------- OIP v2 tensors
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
            raise RequestError(422, f"inputs[{i}].name: {_short(name)} is not an input; the model takes "
                                    + ", ".join(sig.features))
        if not isinstance(data, list):
            raise RequestError(422, f"inputs[{i}] ({name}).data must be a list (binary tensors are not supported)")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not shape or any(not isinstance(s, int) or s < 0 for s in shape):
            raise RequestError(422, f"inputs[{i}] ({name}).shape must be a list of non-negative integers")
        if math.prod(shape) != len(data) or (len(shape) > 1 and any(s != 1 for s in shape[1:])):
            raise RequestError(422, f"inputs[{i}] ({name}): shape {shape} does not fit {len(data)} values; "
                                    "use [n] or [n, 1]")
        wants_number = name in sig.numeric
        if wants_number and dtype not in _OIP_NUMERIC:
            raise RequestError(422, f"inputs[{i}] ({name}).datatype {_short(dtype)}: a numeric type is required")
        if not wants_number and dtype != "BYTES":
            raise RequestError(422, f"inputs[{i}] ({name}).datatype {_short(dtype)}: BYTES is required")
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


# ---------------------------------------------------------------------------- metrics
class ServerMetrics:
    """Prometheus metrics of one server, in a registry of its own (no global state)."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter("loopml_requests", "HTTP requests by route and status",
                                ["model", "route", "status"], registry=self.registry)
        self.latency = Histogram("loopml_request_latency_seconds", "Time to answer a prediction request",
                                 ["model", "version"], registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.rows = Counter("loopml_prediction_rows", "Rows scored", ["model", "version"], registry=self.registry)
        self.values = Histogram("loopml_prediction_value", "Predicted score or value (binary, regression)",
                                ["model", "version"], registry=self.registry,
                                buckets=(.1, .2, .3, .4, .5, .6, .7, .8, .9, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000))
        self.classes = Counter("loopml_predicted_class", "Predicted class (multiclass)",
                               ["model", "version", "cls"], registry=self.registry)
        self.unknown = Counter("loopml_unknown_category", "Categorical values not seen in training",
                               ["model", "feature"], registry=self.registry)
        self.batch = Histogram("loopml_batch_rows", "Rows per micro-batch", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.traffic = Gauge("loopml_traffic_weight", "Share of traffic per served version",
                             ["model", "version"], registry=self.registry)
        self.errors = Counter("loopml_prediction_errors", "Rows the model failed to answer (valid input)",
                              ["model", "version"], registry=self.registry)
        self.shadow_latency = Histogram("loopml_shadow_latency_seconds", "Time the shadow version took on a "
                                        "mirrored request", ["model", "version"], registry=self.registry,
                                        buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.log_dropped = Gauge("loopml_prediction_log_dropped", "Log records dropped (queue full)",
                                 ["model"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---------------------------------------------------------------------------- the core
@dataclass
class _Pending:
    predictor: Predictor
    rows: list[dict[str, Any]]
    future: asyncio.Future[np.ndarray]


class ServingCore:
    """What is served and how: routing, batching, logging, metrics. Transport-independent."""

    def __init__(self, model_name: str, *, entity: str | None = None, limits: ServerLimits | None = None,
                 log_writer: Any = None) -> None:
        self.model_name = model_name
        self.entity = entity
        self.limits = limits or ServerLimits()
        self.routing = Routing({}, {})
        self._exported_versions: set[int] = set()
        self.log_writer = log_writer
        self.metrics = ServerMetrics(model_name)
        self.feature_lookup: Callable[[list[Any]], Any] | None = None
        self.requests_served = 0
        self._rng = random.Random(0)
        self._children: dict[int, tuple[Any, Any, Any]] = {}
        self._request_children: dict[tuple[str, int], Any] = {}
        self._dropped = self.metrics.log_dropped.labels(model_name)
        self._inflight = 0
        self.active = 0  # prediction requests received and not yet answered (batching decisions)
        self.server_state: Any = None  # uvicorn's, set by the protocol: its request tasks tell concurrency
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ versions and traffic
    def add_version(self, version: int, predictor: Predictor) -> None:
        # A loaded program is tens of thousands of long-lived objects; freezing them keeps the
        # cyclic GC from rescanning them in full collections (seen as ~100 ms answer stalls).
        gc.collect()
        gc.freeze()
        current = self.routing
        weights = dict(current.weights) if current.weights else {version: 1.0}
        self.routing = Routing({**current.predictors, version: predictor}, weights, current.shadow)
        self._export_traffic()

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        current = self.routing
        unknown = set(weights) - set(current.predictors)
        if unknown:
            raise LoopmlError(f"cannot route to version(s) {sorted(unknown)}: not deployed "
                              f"(deployed: {sorted(current.predictors)})")
        if not any(w > 0 for w in weights.values()) or any(w < 0 for w in weights.values()):
            raise LoopmlError("traffic weights must be >= 0 and at least one > 0")
        self.routing = Routing(current.predictors, dict(weights), current.shadow)
        self._export_traffic()

    def set_shadow(self, version: int | None) -> None:
        """Mirror every request to ``version`` (None: stop). Its answers go to the prediction log
        with ``"shadow": true`` and the answer production gave; clients never see them."""
        current = self.routing
        if version is not None and version not in current.predictors:
            raise LoopmlError(f"cannot shadow version {version}: not deployed (deployed: {sorted(current.predictors)})")
        self.routing = Routing(current.predictors, current.weights, version)

    def remove_version(self, version: int) -> None:
        current = self.routing
        if current.weights.get(version, 0) > 0:
            raise LoopmlError(f"version {version} still receives traffic; move traffic first")
        self.routing = Routing({v: p for v, p in current.predictors.items() if v != version},
                               {v: w for v, w in current.weights.items() if v != version},
                               None if current.shadow == version else current.shadow)
        self._export_traffic()

    def _export_traffic(self) -> None:
        total = sum(self.routing.weights.values()) or 1.0
        for gone in self._exported_versions - set(self.routing.weights):
            self.metrics.traffic.remove(self.model_name, str(gone))
        self._exported_versions = set(self.routing.weights)
        for version, weight in self.routing.weights.items():
            self.metrics.traffic.labels(self.model_name, str(version)).set(weight / total)

    def concurrency(self) -> int:
        """Requests the server is handling right now (uvicorn's request tasks, when known)."""
        state = self.server_state
        return len(state.tasks) if state is not None else self.active

    def count_request(self, route: str, status: int) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self.metrics.requests.labels(self.model_name, route, str(status))
            self._request_children[(route, status)] = child
        child.inc()

    # ------------------------------------------------------------ scoring
    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """Start the batcher (and the log tick) on the running event loop, once per loop."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first request, or a new event loop
            self._queue = asyncio.Queue()
            self._loop = loop
            self._batcher = loop.create_task(self._batch_loop())
            if self.log_writer is not None and getattr(self.log_writer, "_thread", True) is None:
                self._schedule_log_tick(loop)
        return loop

    async def _score(self, predictor: Predictor, rows: list[dict[str, Any]]) -> np.ndarray:
        loop = self._bind_loop()
        assert self._queue is not None
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put_nowait(_Pending(predictor, rows, future))
        return await future

    def _schedule_log_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            try:
                self.log_writer.tick()
            finally:
                if self._loop is loop:
                    loop.call_later(self.log_writer.flush_seconds, tick)

        loop.call_later(self.log_writer.flush_seconds, tick)

    async def _batch_loop(self) -> None:
        """Score whatever is queued as one batch per model version; no artificial wait."""
        queue = self._queue
        assert queue is not None
        while True:
            first = await queue.get()
            if self.concurrency() > queue.qsize() + 1:  # others are being read: let them join this batch
                await asyncio.sleep(0)
            batch = [first]
            while not queue.empty() and sum(len(p.rows) for p in batch) < 1024:
                batch.append(queue.get_nowait())
            by_model: dict[int, list[_Pending]] = {}
            for item in batch:
                by_model.setdefault(id(item.predictor), []).append(item)
            for items in by_model.values():
                rows = [r for item in items for r in item.rows]
                try:
                    scores = items[0].predictor.predict_rows(rows)
                except Exception as exc:
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                self.metrics.batch.labels(self.model_name).observe(len(rows))
                start = 0
                for item in items:
                    if not item.future.done():
                        item.future.set_result(scores[start:start + len(item.rows)])
                    start += len(item.rows)

    async def predict(self, payload: Any, *, version: int | None = None,
                      request_id: str | None = None) -> dict[str, Any]:
        routing = self.routing  # one consistent snapshot for the whole request
        if not routing.predictors:
            raise RequestError(503, "no model version is deployed yet")
        if version is None:
            version = routing.pick(self._rng)
        elif version not in routing.predictors:
            raise RequestError(404, f"version {version} of {self.model_name!r} is not served; "
                                    f"served: {sorted(routing.predictors)}")
        predictor = routing.predictors[version]
        extra = (self.entity,) if self.entity else ()
        if self.feature_lookup is not None:
            payload = await asyncio.to_thread(self._fill_online_features, payload, predictor.signature)
        rows = validate_rows(payload, predictor.signature, max_rows=self.limits.max_rows, extra_allowed=extra,
                             max_string_chars=self.limits.max_string_chars)
        self._bind_loop()
        t0 = time.perf_counter()
        self._inflight += 1
        try:
            if self.concurrency() <= 1 and (self._queue is None or self._queue.empty()):
                scores = predictor.predict_rows(rows)  # alone: no batch to join, skip the queue hop
            else:
                scores = await self._score(predictor, rows)
            answer = predictor.answer(scores)
        except Exception as exc:  # the model failed on valid input: count it against its version
            self._log_failure(version, rows, exc, request_id)
            raise
        finally:
            self._inflight -= 1
        elapsed = time.perf_counter() - t0
        self._observe(version, predictor.signature, rows, answer, elapsed, request_id)
        self.requests_served += 1
        shadow = routing.shadow
        if shadow is not None and shadow != version and shadow in routing.predictors:
            task = asyncio.get_running_loop().create_task(
                self._mirror(shadow, routing.predictors[shadow], rows, version, answer, request_id))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return {"model": self.model_name, "version": version, **answer}

    def _log_failure(self, version: int, rows: list[dict[str, Any]], exc: BaseException, request_id: str | None,
                     shadow: bool = False) -> None:
        self.metrics.errors.labels(self.model_name, str(version)).inc(len(rows))
        if self.log_writer is not None:
            now = time.time()
            extra = {"shadow": True} if shadow else {}
            self.log_writer.write([{"ts": now, "request_id": request_id, "version": version,
                                    "error": type(exc).__name__, **extra} for _ in rows])

    async def _mirror(self, version: int, predictor: Predictor, rows: list[dict[str, Any]], primary: int,
                      primary_answer: Mapping[str, Any], request_id: str | None) -> None:
        """Score a copy of a request on the shadow version, after the client has its answer."""
        t0 = time.perf_counter()
        try:
            answer = predictor.answer(await self._score(predictor, rows))
        except Exception as exc:
            self._log_failure(version, rows, exc, request_id, shadow=True)
            return
        elapsed = time.perf_counter() - t0
        self.metrics.shadow_latency.labels(self.model_name, str(version)).observe(elapsed)
        if self.log_writer is None:
            return
        now = time.time()
        per_row_ms = elapsed * 1000 / len(rows)
        sig = predictor.signature
        records = []
        for row, out, prim in zip(rows, log_outputs(answer), log_outputs(primary_answer), strict=True):
            records.append({"ts": now, "request_id": request_id, "version": version, "shadow": True,
                            "primary_version": primary, "primary_output": prim["output"],
                            "inputs": {k: row[k] for k in sig.features}, **out, "latency_ms": per_row_ms})
        self.log_writer.write(records)

    def _observe(self, version: int, sig: Signature, rows: list[dict[str, Any]], answer: Mapping[str, Any],
                 elapsed: float, request_id: str | None) -> None:
        v = str(version)
        m = self.metrics
        children = self._children.get(version)
        if children is None:  # label lookups take a lock: do them once per version
            children = (m.latency.labels(self.model_name, v), m.rows.labels(self.model_name, v),
                        m.values.labels(self.model_name, v))
            self._children[version] = children
        latency, counted, values = children
        latency.observe(elapsed)
        counted.inc(len(rows))
        if "probabilities" in answer:
            for label in answer["predictions"]:
                m.classes.labels(self.model_name, v, label).inc()
        else:
            for value in answer["predictions"]:
                values.observe(value)
        unknown_per_row = []
        pairs = list(zip(sig.categorical, sig._lookups, strict=True))
        for row in rows:
            unknown = [c for c, lookup in pairs if row[c] not in lookup]
            for feature in unknown:
                m.unknown.labels(self.model_name, feature).inc()
            unknown_per_row.append(unknown)
        if self.log_writer is None:
            return
        now = time.time()
        per_row_ms = elapsed * 1000 / len(rows)
        records = []
        for row, out, unknown in zip(rows, log_outputs(answer), unknown_per_row, strict=True):
            record = {"ts": now, "request_id": request_id, "version": version,
                      "inputs": {k: row[k] for k in sig.features}, **out, "latency_ms": per_row_ms}
            if self.entity and row.get(self.entity) is not None:
                record["entity"] = row[self.entity]
            if unknown:
                record["unknown"] = unknown
            records.append(record)
        self.log_writer.write(records)
        self._dropped.set(getattr(self.log_writer, "dropped", 0))

    def _fill_online_features(self, payload: Any, sig: Signature) -> Any:
        """Rows that carry only the entity id get their features from the online store."""
        if self.feature_lookup is None or not self.entity or not isinstance(payload, dict):
            return payload
        rows = payload.get("rows")
        if not isinstance(rows, list):
            return payload
        wanted = set(sig.features)
        by_id = [i for i, r in enumerate(rows) if isinstance(r, dict) and set(r) == {self.entity}
                 and isinstance(r[self.entity], int | str) and not isinstance(r[self.entity], bool)]
        if not by_id:
            return payload
        found = self.feature_lookup([rows[i][self.entity] for i in by_id])
        filled = list(rows)
        for i, record in zip(by_id, found.to_dict("records"), strict=True):
            values = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items() if k in wanted}
            if any(v is None or v != v for v in values.values()):
                raise RequestError(404, f"rows[{i}]: no online features for {self.entity}="
                                        f"{_short(rows[i][self.entity])}; is the feature view materialized?")
            filled[i] = {**rows[i], **values}
        return {**payload, "rows": filled}

    def health(self) -> dict[str, Any]:
        routing = self.routing
        return {"status": "ok" if routing.predictors else "empty", "model": self.model_name,
                "versions": sorted(routing.predictors), "traffic": {str(k): v for k, v in routing.weights.items()},
                "shadow": routing.shadow,
                "requests_served": self.requests_served}


# ---------------------------------------------------------------------------- the ASGI app
async def read_body(request: Any, limits: ServerLimits) -> bytes:
    """The body, with the size limit enforced before reading and a deadline on slow senders."""
    raw_length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if raw_length is None and not chunked:
        raise RequestError(411, "Content-Length header is required")
    if raw_length is not None:
        if not raw_length.isdigit():
            raise RequestError(400, f"Content-Length {raw_length[:20]!r} is not a non-negative integer")
        if int(raw_length) > limits.max_body_bytes:
            # Decided from the header, before reading. What the client is already sending is
            # discarded (up to DRAIN_LIMIT, within the body timeout) so it can read the 413 rather
            # than fail on a reset connection; the connection is then closed.
            await _discard(request, min(int(raw_length), DRAIN_LIMIT), limits.body_timeout)
            raise RequestError(413, f"body is {raw_length} bytes; the limit is {limits.max_body_bytes}")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    try:
        async with asyncio.timeout(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "the client went away before sending the body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise RequestError(413, f"body exceeds the limit of {limits.max_body_bytes} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {limits.body_timeout:g} s") from None
    body = b"".join(chunks)
    if raw_length is not None and len(body) != int(raw_length):
        raise RequestError(400, f"body has {len(body)} bytes but Content-Length says {raw_length}")
    return body


async def _discard(request: Any, limit: int, timeout: float) -> None:
    seen = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen >= limit:
                    break


def build_app(core: ServingCore, *, on_startup: Sequence[Callable[[], Any]] = (),
              on_shutdown: Sequence[Callable[[], Any]] = ()) -> Any:
    """The Starlette app for ``core``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from loopml import __version__

    limits = core.limits
    name = core.model_name

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))

    def authorized(request: Request) -> bool:
        if not limits.token:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), limits.token.encode())

    def guarded(route: str, handler: Callable[[Request], Any], *, public: bool = False) -> Callable[[Request], Any]:
        scoring = route in ("/predict", "/v2/models/infer")

        async def endpoint(request: Request) -> Response:
            if scoring:
                core.active += 1
            try:
                if not public and not authorized(request):
                    raise RequestError(401, "a valid bearer token is required (Authorization: Bearer <token>)")
                response = await handler(request)
            except RequestError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
                if exc.status in (408, 413):
                    headers["Connection"] = "close"
                response = error(exc.status, str(exc), headers)
            except Exception as exc:  # a bug, not the client's fault: say so, keep serving
                log.exception("internal error on %s", route)
                response = error(500, f"internal error: {type(exc).__name__}")
            finally:
                if scoring:
                    core.active -= 1
            core.count_request(route, response.status_code)
            return response

        return endpoint

    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count(1)

    def request_id(request: Request) -> str:
        given = request.headers.get("x-request-id")
        return given if given and _REQUEST_ID.match(given) else f"{prefix}-{next(counter)}"

    async def json_body(request: Request, *, oip: bool = False) -> Any:
        ctype = request.headers.get("content-type", "")
        if oip and "inference-header-content-length" in request.headers:
            raise RequestError(415, "binary tensor data is not supported; send JSON tensors (binary_data=False)")
        if "json" not in ctype and not (oip and not ctype):  # OIP clients (tritonclient) may omit it
            raise RequestError(415, "Content-Type must be application/json")
        return parse_json(await read_body(request, limits), limits.max_json_depth)

    async def predict(request: Request) -> Response:
        rid = request_id(request)
        payload = await json_body(request)
        body = await core.predict(payload, request_id=rid)
        return JSONResponse(body, headers={"X-Model-Version": str(body["version"]), "X-Request-ID": rid})

    def model_version(request: Request) -> int | None:
        if request.path_params["model"] != name:
            raise RequestError(404, f"no model {request.path_params['model']!r}; this server serves {name!r}")
        raw = request.path_params.get("version")
        if raw is None:
            return None
        if not raw.isdigit() or int(raw) not in core.routing.predictors:
            raise RequestError(404, f"version {raw[:20]!r} of {name!r} is not served; "
                                    f"served: {sorted(core.routing.predictors)}")
        return int(raw)

    async def infer(request: Request) -> Response:
        version = model_version(request)
        body = await json_body(request, oip=True)
        routing = core.routing
        if not routing.predictors:
            raise RequestError(503, "no model version is deployed yet")
        sig = routing.predictors[version if version is not None else max(routing.predictors)].signature
        payload, given_id = oip_rows(body, sig, limits.max_rows)
        rid = given_id if given_id and _REQUEST_ID.match(given_id) else request_id(request)
        answer = await core.predict(payload, version=version, request_id=rid)
        n = len(payload["rows"])
        out = {"model_name": name, "model_version": str(answer["version"]), "id": rid,
               "outputs": oip_outputs(answer, n)}
        return JSONResponse(out, headers={"X-Model-Version": str(answer["version"])})

    async def model_metadata(request: Request) -> Response:
        version = model_version(request)
        routing = core.routing
        if not routing.predictors:
            raise RequestError(404, f"no version of {name!r} is deployed yet")
        sig = routing.predictors[version if version is not None else max(routing.predictors)].signature
        return JSONResponse(oip_model_metadata(name, sorted(routing.predictors) if version is None else [version],
                                               sig))

    async def model_ready(request: Request) -> Response:
        model_version(request)
        ready = bool(core.routing.predictors)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = bool(core.routing.predictors)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "loopml", "version": __version__, "extensions": []})

    async def health(request: Request) -> Response:
        return JSONResponse(core.health())

    async def metadata(request: Request) -> Response:
        routing = core.routing
        return JSONResponse({"model": name, "versions": {str(v): json.loads(p.signature.to_json())
                                                         for v, p in routing.predictors.items()}})

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/predict", guarded("/predict", predict), methods=["POST"]),
        Route("/health", guarded("/health", health, public=True), methods=["GET"]),
        Route("/metadata", guarded("/metadata", metadata), methods=["GET"]),
        Route("/metrics", guarded("/metrics", metrics), methods=["GET"]),
        Route("/v2", guarded("/v2", server_metadata), methods=["GET"]),
        Route("/v2/health/live", guarded("/v2/health/live", live, public=True), methods=["GET"]),
        Route("/v2/health/ready", guarded("/v2/health/ready", ready, public=True), methods=["GET"]),
        Route("/v2/models/{model}", guarded("/v2/models", model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", guarded("/v2/models/ready", model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", guarded("/v2/models/infer", infer), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", guarded("/v2/models", model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", guarded("/v2/models/ready", model_ready),
              methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", guarded("/v2/models/infer", infer), methods=["POST"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        if status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif status == 404:
            message = f"no route {request.url.path[:100]}; use POST /predict or the /v2 Open Inference Protocol"
        else:
            message = str(exc.detail)
        core.count_request("unrouted", status)
        return error(status, message, getattr(exc, "headers", None))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        for fn in on_startup:
            result = fn()
            if asyncio.iscoroutine(result):
                await result
        try:
            yield
        finally:
            for fn in on_shutdown:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)


# ---------------------------------------------------------------------------- running it
def _raw_json(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def header_timeout_protocol(header_timeout: float, max_connections: int, core: ServingCore | None = None) -> type:
    """uvicorn's httptools protocol with a header deadline and a connection cap, answering in JSON.

    uvicorn arms no timer until a request's headers are complete, so a client that trickles
    header bytes (slowloris) would hold a connection forever; and its own concurrency limit counts
    requests, answering in plain text. Here a connection past ``max_connections`` gets a JSON 503
    and is closed at once.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_raw_json("408 Request Timeout", "request headers did not arrive in time"))
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if core is not None:
                core.server_state = self.server_state
            if len(self.connections) > max_connections:
                transport.write(_raw_json("503 Service Unavailable", f"more than {max_connections} connections "
                                          "are open; retry shortly"))
                transport.close()
                return
            self._arm()

        def send_400_response(self, msg: str) -> None:  # the parser's own 400s, in JSON like the rest
            self.transport.write(_raw_json("400 Bad Request", f"malformed HTTP request ({msg.rstrip('.')}): "
                                           "check the request line, headers and Content-Length"))
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def uvicorn_config(app: Any, limits: ServerLimits, core: ServingCore | None = None, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, http=header_timeout_protocol(limits.header_timeout, limits.max_connections, core),
                          loop="asyncio", timeout_keep_alive=int(limits.keep_alive_timeout),
                          timeout_graceful_shutdown=30, access_log=False, log_level="warning", lifespan="on",
                          **kwargs)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it, headers and body go out in two segments and Nagle
    # plus the client's delayed ACK add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def warn_if_exposed(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        log.warning("binding %s: the server is reachable from other machines; set a token "
                    "(LOOPML_SERVE_TOKEN) and put TLS in front of it", host)


class ModelServer:
    """The server in a background thread of this process (the ``builtin`` backend, tests)."""

    def __init__(self, model_name: str, *, host: str = "127.0.0.1", port: int = 0, log_dir: Path | None = None,
                 entity: str | None = None, limits: ServerLimits | None = None, log_sink: Any = None,
                 segment_seconds: float = 3600.0) -> None:
        import uvicorn

        from loopml.predlog import PredictionLogWriter

        warn_if_exposed(host)
        writer = (PredictionLogWriter(log_dir, model_name, sink=log_sink, threaded=False,
                                      segment_seconds=segment_seconds) if log_dir is not None else None)
        self.core = ServingCore(model_name, entity=entity, limits=limits, log_writer=writer)
        self.socket = bind(host, port)
        self._server = uvicorn.Server(uvicorn_config(build_app(self.core), self.core.limits, self.core))
        self._thread: threading.Thread | None = None

    @property
    def model_name(self) -> str:
        return self.core.model_name

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name=f"loopml-serve-{self.model_name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise LoopmlError(f"the model server for {self.model_name!r} did not start")
        return self

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish, close the log."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.socket.close()
        if self.core.log_writer is not None:
            self.core.log_writer.close()

    # routing and feature lookup, for callers that hold the server
    def add_version(self, version: int, predictor: Predictor) -> None:
        self.core.add_version(version, predictor)

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        self.core.set_traffic(weights)

    def set_shadow(self, version: int | None) -> None:
        self.core.set_shadow(version)

    def remove_version(self, version: int) -> None:
        self.core.remove_version(version)

    @property
    def routing(self) -> Routing:
        return self.core.routing

    @property
    def feature_lookup(self) -> Callable[[list[Any]], Any] | None:
        return self.core.feature_lookup

    @feature_lookup.setter
    def feature_lookup(self, lookup: Callable[[list[Any]], Any] | None) -> None:
        self.core.feature_lookup = lookup

    def flush_log(self) -> None:
        if self.core.log_writer is not None:
            self.core.log_writer.flush()
