"""loopml's model server: an ASGI app (Starlette on uvicorn) with micro-batching and hard limits.

Routes (JSON everywhere, errors included):

* ``POST /predict`` ``{"rows": [{feature: value}, …]}`` -> ``{"model", "version", "predictions"}``
  (multiclass adds ``probabilities`` and ``classes``); rows holding only the entity id get their
  features from the online store.
* Open Inference Protocol v2 (KServe, Triton clients): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]`` (metadata), ``…/ready`` and
  ``POST …/infer`` with one input tensor per feature (FP32/INT64 for numbers, BYTES for categories),
  and, with ``[serving.options] explain = true``, ``POST …/explain`` with the same tensors: each
  row's attribution to each feature (:mod:`loopml.explain`), bounded in rows and samples, one at a time.
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
import hmac
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loopml import __version__, prediction_records
from loopml.explain import explain_rows, oip_explanation
from loopml.serving.core import ServingCore
from loopml.serving.oip import oip_model_metadata, oip_outputs, oip_rows
from loopml.serving.requests import (
    DRAIN_LIMIT,
    REQUEST_ID_PATTERN,
    VERSION_PATTERN,
    ModelFailed,
    RequestError,
    ServerLimits,
    parse_json,
    validate_rows,
)

log = logging.getLogger(__name__)
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


async def read_body(request: Any, limits: ServerLimits) -> bytes:
    """The body, with the size limit enforced before reading and a deadline on slow senders."""
    raw_length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if raw_length is None and not chunked:
        raise RequestError(411, "Content-Length header is required")
    if raw_length is not None:
        if not CONTENT_LENGTH.fullmatch(raw_length):
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
                if exc.version is not None:
                    headers["X-Model-Version"] = str(exc.version)
                response = error(exc.status, str(exc), headers)
            except ModelFailed as exc:  # the model raised on valid input: a 500 of that version
                log.error("version %s of %s failed on %s", exc.version, name, route, exc_info=exc.cause)
                response = error(500, f"internal error: {type(exc.cause).__name__}",
                                 {"X-Model-Version": str(exc.version)})
            except Exception as exc:  # a bug, not the client's fault: say so, keep serving
                log.exception("internal error on %s", route)
                response = error(500, f"internal error: {type(exc).__name__}")
            finally:
                if scoring:
                    core.active -= 1
            core.count_request(route, response.status_code, response.headers.get("x-model-version", ""))
            if core.draining:
                response.headers["connection"] = "close"
            return response

        return endpoint

    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count(1)

    def request_id(request: Request) -> str:
        given = request.headers.get("x-request-id")
        return given if given and REQUEST_ID_PATTERN.match(given) else f"{prefix}-{next(counter)}"

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
        headers = {"X-Model-Version": str(body["version"]), "X-Request-ID": rid}
        fast = prediction_records.answer_json(body)
        if fast is None:
            return JSONResponse(body, headers=headers)
        return Response(fast, media_type="application/json", headers=headers)

    def model_version(request: Request) -> int | None:
        if request.path_params["model"] != name:
            raise RequestError(404, f"no model {request.path_params['model']!r}; this server serves {name!r}")
        raw = request.path_params.get("version")
        if raw is None:
            return None
        if not VERSION_PATTERN.fullmatch(raw) or int(raw) not in core.routing.predictors:
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
        rid = given_id if given_id and REQUEST_ID_PATTERN.match(given_id) else request_id(request)
        answer = await core.predict(payload, version=version, request_id=rid)
        n = len(payload["rows"])
        out = {"model_name": name, "model_version": str(answer["version"]), "id": rid,
               "outputs": oip_outputs(answer, n)}
        return JSONResponse(out, headers={"X-Model-Version": str(answer["version"])})

    explaining = asyncio.Semaphore(1)  # one explanation at a time: its cost is bounded, not free

    async def explain(request: Request) -> Response:
        if not limits.explain:
            raise RequestError(404, "explanations are off on this server: set [serving.options] explain = true")
        version = model_version(request)
        body = await json_body(request, oip=True)
        routing = core.routing
        if not routing.predictors:
            raise RequestError(503, "no model version is deployed yet")
        if version is None:  # the version most traffic goes to (production)
            version = max(routing.weights, key=lambda v: (routing.weights[v], v)) if routing.weights \
                else max(routing.predictors)
        predictor = routing.predictors[version]
        payload, given_id = oip_rows(body, predictor.signature, limits.explain_max_rows)
        rows = validate_rows(payload, predictor.signature, max_rows=limits.explain_max_rows,
                             max_string_chars=limits.max_string_chars)
        if explaining.locked():
            raise RequestError(429, "an explanation is being computed; retry in a moment")
        async with explaining:
            found = await asyncio.to_thread(explain_rows, predictor, rows, samples=limits.explain_samples)
        rid = given_id if given_id and REQUEST_ID_PATTERN.match(given_id) else request_id(request)
        out = {"model_name": name, "model_version": str(version), "id": rid, "outputs": oip_explanation(found),
               "parameters": {"method": found.method, "features": list(found.features), "samples": found.samples,
                              "baseline": dict(predictor.signature.baseline)}}
        return JSONResponse(out, headers={"X-Model-Version": str(version), "X-Request-ID": rid})

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
        ready = bool(core.routing.predictors) and not core.draining
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = bool(core.routing.predictors) and not core.draining
        body = {"ready": ok, "draining": True} if core.draining else {"ready": ok}
        return JSONResponse(body, status_code=200 if ok else 503)

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

    scoring = guarded("/predict", predict)
    routes = [
        Route("/predict", scoring, methods=["POST"]),
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
        Route("/v2/models/{model}/explain", guarded("/v2/models/explain", explain), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/explain", guarded("/v2/models/explain", explain),
              methods=["POST"]),
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
        headers = {**(getattr(exc, "headers", None) or {}), **({"connection": "close"} if core.draining else {})}
        return error(status, message, headers)

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

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.router.redirect_slashes = False  # an API answers /predict/ with a 404 naming the routes, not a 307
    return TimedApp(app, core, predict=lambda scope, receive: scoring(Request(scope, receive)))


class TimedApp:
    """The app, timing each answered prediction from its first byte in (the protocol stamps it) to
    its last byte out: reading, parsing, checks, scoring and writing, by the version that answered.

    ``POST /predict``, the hot path, goes straight to its guarded endpoint: it already turns every
    error into a JSON answer, so Starlette's router and its two exception middlewares, about a
    fifth of a one-row request, would only add their cost. Every other route goes through them.
    """

    def __init__(self, app: Any, core: ServingCore, predict: Callable[[Any, Any], Any] | None = None) -> None:
        self.app, self.core, self.predict = app, core, predict

    @property
    def routes(self) -> list[Any]:
        return list(self.app.routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = scope.get("loopml.started") or time.perf_counter()
        version = ""
        core = self.core

        async def send_timed(message: Any) -> None:
            nonlocal version
            if message["type"] == "http.response.start" and message["status"] == 200:
                version = next((v.decode() for k, v in message.get("headers", ()) if k == b"x-model-version"), "")
            await send(message)
            if version and message["type"] == "http.response.body" and not message.get("more_body", False):
                core.observe_request(version, time.perf_counter() - started)

        if self.predict is not None and scope["path"] == "/predict" and scope["method"] == "POST":
            response = await self.predict(scope, receive)
            await response(scope, receive, send_timed)
            return
        await self.app(scope, receive, send_timed)
