"""The built-in model server: JSON over HTTP, strict input checks, canary traffic, hot swap.

``POST /predict`` with ``{"rows": [{feature: value, …}, …]}`` answers
``{"model", "version", "predictions"}``. Every input problem is a 4xx naming the field:
400 malformed JSON or NaN/Infinity literals, 413 body over the limit, 415 not JSON,
422 missing/unknown fields, wrong types, non-finite numbers, too many rows. ``GET /health`` and
``GET /metadata`` describe what is served. Each request is routed to one version by the traffic
weights (canary/A-B); swapping versions replaces an immutable routing table, so requests in
flight finish on the version they started with and none is dropped. Every prediction is appended
to a JSONL log that the monitor flow reads. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.artifacts import Predictor, Signature
from loopml.errors import LoopmlError
from loopml.records import ModelVersion

MAX_BODY_BYTES = 1 << 20
MAX_ROWS = 1000
DRAIN_LIMIT = 16 << 20  # oversized bodies up to this size are read and dropped before the 413


class BuiltinServingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    log_dir: Path | None = None  # default: <home>/predictions
    max_body_bytes: int = MAX_BODY_BYTES
    max_rows: int = MAX_ROWS


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Routing:
    """An immutable routing table: replaced whole on every change."""

    predictors: Mapping[int, Predictor]
    weights: Mapping[int, float]

    def pick(self, rng: random.Random) -> int:
        versions = [v for v, w in self.weights.items() if w > 0]
        if len(versions) == 1:
            return versions[0]
        return rng.choices(versions, weights=[self.weights[v] for v in versions])[0]


def _reject_constant(name: str) -> float:
    raise RequestError(400, f"JSON literal {name} is not allowed; send finite numbers only")


def validate_rows(
    payload: Any, sig: Signature, *, max_rows: int, extra_allowed: Sequence[str] = ()
) -> list[dict[str, Any]]:
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
                raise RequestError(422, f"rows[{i}].{name}: expected a number, got {json.dumps(value)}")
            if not math.isfinite(value):
                raise RequestError(422, f"rows[{i}].{name}: must be finite")
        for name in sig.categorical:
            if name not in row:
                raise RequestError(422, f"rows[{i}].{name}: missing (a string is required)")
            if not isinstance(row[name], str):
                raise RequestError(422, f"rows[{i}].{name}: expected a string, got {json.dumps(row[name])}")
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise RequestError(422, f"rows[{i}].{unknown[0]}: unknown field; the model takes "
                                    f"{', '.join(sorted(set(sig.numeric) | set(sig.categorical)))}")
    return rows


class ModelServer:
    """A threaded HTTP server for one model name and any number of its versions."""

    def __init__(self, model_name: str, *, host: str = "127.0.0.1", port: int = 0,
                 log_path: Path | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 max_rows: int = MAX_ROWS, entity: str | None = None) -> None:
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self.entity = entity
        self.routing = Routing({}, {})
        self.log_path = log_path
        self._log_file: Any = None  # opened on the first prediction, kept open (append mode)
        self._log_lock = threading.Lock()
        self._rng = random.Random(0)
        self._rng_lock = threading.Lock()
        self.requests_served = 0
        self.feature_lookup: Callable[[list[Any]], Any] | None = None
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="loopml-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    # ---------------------------------------------------------------- versions and traffic
    def add_version(self, version: int, predictor: Predictor) -> None:
        current = self.routing
        weights = dict(current.weights) if current.weights else {version: 1.0}
        self.routing = Routing({**current.predictors, version: predictor}, weights)

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        current = self.routing
        unknown = set(weights) - set(current.predictors)
        if unknown:
            raise LoopmlError(f"cannot route to version(s) {sorted(unknown)}: not deployed "
                              f"(deployed: {sorted(current.predictors)})")
        if not any(w > 0 for w in weights.values()) or any(w < 0 for w in weights.values()):
            raise LoopmlError("traffic weights must be >= 0 and at least one > 0")
        self.routing = Routing(current.predictors, dict(weights))

    def remove_version(self, version: int) -> None:
        current = self.routing
        if current.weights.get(version, 0) > 0:
            raise LoopmlError(f"version {version} still receives traffic; move traffic first")
        self.routing = Routing({v: p for v, p in current.predictors.items() if v != version},
                               {v: w for v, w in current.weights.items() if v != version})

    # ---------------------------------------------------------------- requests
    def _predict(self, payload: Any) -> dict[str, Any]:
        routing = self.routing  # one consistent snapshot for the whole request
        if not routing.predictors:
            raise RequestError(503, "no model version is deployed yet")
        with self._rng_lock:
            version = routing.pick(self._rng)
        predictor = routing.predictors[version]
        extra = (self.entity,) if self.entity else ()
        payload = self._fill_online_features(payload, predictor.signature)
        rows = validate_rows(payload, predictor.signature, max_rows=self.max_rows, extra_allowed=extra)
        t0 = time.perf_counter()
        answer = predictor.answer(predictor.predict_rows(rows))
        latency = (time.perf_counter() - t0) * 1000
        self._log(version, rows, answer, latency)
        self.requests_served += 1
        return {"model": self.model_name, "version": version, **answer}

    def _fill_online_features(self, payload: Any, sig: Signature) -> Any:
        """Rows that carry only the entity id get their features from the online store."""
        if self.feature_lookup is None or not self.entity or not isinstance(payload, dict):
            return payload
        rows = payload.get("rows")
        if not isinstance(rows, list):
            return payload
        wanted = [*sig.numeric, *sig.categorical]
        by_id = [i for i, r in enumerate(rows) if isinstance(r, dict) and set(r) == {self.entity}]
        if not by_id:
            return payload
        found = self.feature_lookup([rows[i][self.entity] for i in by_id])
        filled = list(rows)
        for i, record in zip(by_id, found.to_dict("records"), strict=True):
            values = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items() if k in wanted}
            if any(v is None or v != v for v in values.values()):
                raise RequestError(404, f"rows[{i}]: no online features for {self.entity}="
                                        f"{json.dumps(rows[i][self.entity])}; is the feature view materialized?")
            filled[i] = {**rows[i], **values}
        return {**payload, "rows": filled}

    def _log(self, version: int, rows: list[dict[str, Any]], answer: dict[str, Any], latency: float) -> None:
        if self.log_path is None:
            return
        now = time.time()
        lines = "".join(json.dumps({"ts": now, "version": version, "inputs": r, **output,
                                    "latency_ms": latency / len(rows)}) + "\n"
                        for r, output in zip(rows, log_outputs(answer), strict=True))
        with self._log_lock:
            if self._log_file is None:
                self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
            self._log_file.write(lines)
            self._log_file.flush()  # readers (the monitor flow) see every answered request

    def _health(self) -> dict[str, Any]:
        routing = self.routing
        return {"status": "ok" if routing.predictors else "empty", "model": self.model_name,
                "versions": sorted(routing.predictors), "traffic": {str(k): v for k, v in routing.weights.items()},
                "requests_served": self.requests_served}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any], version: int | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if version is not None:
                    self.send_header("X-Model-Version", str(version))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, server._health())
                elif self.path == "/metadata":
                    routing = server.routing
                    self._send(200, {"model": server.model_name, "versions": {
                        str(v): json.loads(p.signature.to_json()) for v, p in routing.predictors.items()}})
                else:
                    self._send(404, {"error": f"no route {self.path}; use POST /predict, GET /health"})

            def do_POST(self) -> None:
                try:
                    if self.path != "/predict":
                        raise RequestError(404, f"no route {self.path}; use POST /predict")
                    ctype = self.headers.get("Content-Type", "")
                    if "json" not in ctype:
                        raise RequestError(415, "Content-Type must be application/json")
                    try:
                        length = int(self.headers.get("Content-Length", ""))
                    except ValueError:
                        raise RequestError(411, "Content-Length header is required") from None
                    if length > server.max_body_bytes:
                        # Read (and drop) what the client is sending, so it can read the 413 instead
                        # of failing with a broken pipe; past DRAIN_LIMIT just close.
                        self.close_connection = True
                        remaining = min(length, DRAIN_LIMIT)
                        while remaining > 0:
                            chunk = self.rfile.read(min(remaining, 1 << 16))
                            if not chunk:
                                break
                            remaining -= len(chunk)
                        raise RequestError(413, f"body is {length} bytes; the limit is {server.max_body_bytes}")
                    raw = self.rfile.read(length)
                    try:
                        payload = json.loads(raw, parse_constant=_reject_constant)
                    except RequestError:
                        raise
                    except ValueError as exc:
                        raise RequestError(400, f"body is not valid JSON: {exc}") from None
                    body = server._predict(payload)
                    self._send(200, body, body["version"])
                except RequestError as exc:
                    self._send(exc.status, {"error": str(exc)})
                except Exception as exc:  # a bug, not the client's fault: say so, keep serving
                    self._send(500, {"error": f"internal error: {type(exc).__name__}"})

        return Handler


def log_outputs(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-row ``output`` fields of the prediction log: the score/value, or the class + probabilities."""
    if "probabilities" in answer:
        return [{"output": c, "probabilities": p} for c, p in zip(answer["predictions"], answer["probabilities"],
                                                                  strict=True)]
    return [{"output": v} for v in answer["predictions"]]


def post_json(url: str, body: Any, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST JSON and return (status, parsed body), 4xx/5xx included."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def output_problem(sig: Signature, scores: Any, n: int) -> str | None:
    """Why these outputs do not fit the task, or None."""
    import numpy as np

    scores = np.asarray(scores)
    if sig.task == "multiclass":
        if scores.shape != (n, len(sig.classes)):
            return f"returns shape {list(scores.shape)}, not [{n}, {len(sig.classes)}]"
        if not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
            return "returns class probabilities that do not sum to 1"
        return None
    if scores.shape != (n,):
        return f"returns shape {list(scores.shape)}, not [{n}]"
    if not np.isfinite(scores).all():
        return "returns non-finite values"
    if sig.task == "binary" and not ((scores >= 0) & (scores <= 1)).all():
        return "returns scores outside [0, 1]"
    return None


class BuiltinServing:
    """The ServingBackend over :class:`ModelServer`, started on first deploy."""

    name = "builtin"

    def __init__(self, options: BuiltinServingOptions, log_dir: Path) -> None:
        self.options = options
        self.prediction_log_dir = log_dir
        self.server: ModelServer | None = None
        self.feature_lookup: Callable[[list[Any]], Any] | None = None

    def use_online_features(self, lookup: Callable[[list[Any]], Any]) -> None:
        """Answer rows that carry only the entity id with features from the online store."""
        self.feature_lookup = lookup
        if self.server is not None:
            self.server.feature_lookup = lookup

    @property
    def url(self) -> str:
        if self.server is None:
            raise LoopmlError("the built-in server is not running; deploy a model first")
        return self.server.url

    def deploy(self, model: ModelVersion, artifact_path: Path) -> str:
        predictor = Predictor.from_bytes(Path(artifact_path).read_bytes())
        if self.server is None:
            self.prediction_log_dir.mkdir(parents=True, exist_ok=True)
            self.server = ModelServer(model.name, host=self.options.host, port=self.options.port,
                                      log_path=self.prediction_log_dir / f"{model.name}.jsonl",
                                      max_body_bytes=self.options.max_body_bytes,
                                      max_rows=self.options.max_rows,
                                      entity=model.lineage.get("entity")).start()
            self.server.feature_lookup = self.feature_lookup
        elif self.server.model_name != model.name:
            raise LoopmlError(f"this server serves {self.server.model_name!r}, not {model.name!r}")
        self.server.add_version(model.version, predictor)
        return self.server.url

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        if self.server is None:
            raise LoopmlError("nothing is deployed")
        self.server.set_traffic(weights)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        status, body = post_json(self.url + "/predict", {"rows": list(rows)})
        if status != 200:
            raise LoopmlError(f"prediction failed with HTTP {status}: {body.get('error')}")
        return body

    def status(self) -> dict[str, Any]:
        if self.server is None:
            return {"status": "stopped"}
        return {"url": self.server.url, "predict_url": self.server.url + "/predict", **self.server._health()}

    def undeploy(self, version: int | None = None) -> None:
        if self.server is None:
            return
        if version is None:
            self.server.stop()
            self.server = None
        else:
            self.server.remove_version(version)

    def smoke_test(self, artifact: bytes, rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
        """Load the artifact the way the server does and answer one validated request."""
        try:
            predictor = Predictor.from_bytes(artifact)
            checked = validate_rows({"rows": list(rows)}, predictor.signature, max_rows=MAX_ROWS,
                                    extra_allowed=list(rows[0].keys()))
            scores = predictor.predict_rows(checked)
            problem = output_problem(predictor.signature, scores, len(checked))
            if problem:
                return False, f"the model loads but {problem}"
            return True, f"loads in the built-in server and answers {len(scores)} rows"
        except Exception as exc:
            return False, f"the built-in server cannot serve it: {type(exc).__name__}: {exc}"
