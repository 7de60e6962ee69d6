"""A thin router in front of TorchServe for canaries and shadows (TorchServe has neither).

TorchServe answers ``/predictions/<model>`` with its default version only. The router listens on
127.0.0.1, and for each ``POST /predictions/<model>``

* picks a version by the backend's traffic weights and forwards the body and the client's
  ``Authorization`` header, unchanged, to TorchServe's ``/predictions/<model>/<version>`` (one
  pooled HTTP/1.1 client), so TorchServe's token auth still decides who may predict;
* relays TorchServe's status and body (4xx stay 4xx), adding ``X-Model-Version``;
* with a shadow version set, sends a copy of the request to it after the client has its answer,
  tagged ``"loopml": {"shadow_of": v, "primary_outputs": [...]}`` so loopml's handler logs the
  shadow's answers as shadow records beside what production answered;
* logs rows of a version that failed with a 5xx as error records, so the canary judge sees them.

Clients that call TorchServe's own inference port still get the default (production) version.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml import prediction_records
from loopml.predlog import append_segment
from loopml.serving.transport import bind

if TYPE_CHECKING:
    from loopml_torchserve import TorchServeBackend

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Router:
    def __init__(self, backend: TorchServeBackend) -> None:
        self.backend = backend
        self._rng = random.Random(0)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: Any = None
        self._client: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def _pick(self) -> int:
        weights = dict(self.backend.weights)
        versions = [v for v, w in weights.items() if w > 0]
        if len(versions) == 1:
            return versions[0]
        return self._rng.choices(versions, weights=[weights[v] for v in versions])[0]

    def _log_failure(self, version: int, body: Any, status: int, shadow: bool, request_id: str) -> None:
        folder = self.backend.prediction_log_dir
        rows = body.get("rows") if isinstance(body, dict) else None
        n = len(rows) if isinstance(rows, list) else 1
        records = prediction_records.failed(ts=time.time(), version=version, request_id=request_id, rows=n,
                                            error=f"HTTP {status}", shadow=shadow)
        append_segment(Path(folder), self.backend.model, prediction_records.encode(records))

    def _headers(self, authorization: str | None, request_id: str) -> dict[str, str]:
        """The client's own credentials go through (TorchServe checks them); mirrored copies, which
        no client sent, carry the backend's token. The request id lands in the prediction log."""
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def _forward(self, version: int, data: bytes, authorization: str | None,
                       request_id: str) -> tuple[int, bytes]:
        url = f"{self.backend.inference_url}/predictions/{self.backend.model}/{version}"
        response = await self._client.post(url, content=data, headers=self._headers(authorization, request_id))
        return response.status_code, response.content

    async def _mirror(self, shadow: int, payload: dict[str, Any], primary: int, answer: bytes,
                      request_id: str) -> None:
        try:
            outputs = json.loads(answer).get("predictions", [])
            body = {**payload, "loopml": {"shadow_of": primary, "primary_outputs": outputs}}
            token = self.backend.inference_token
            status, _ = await self._forward(shadow, json.dumps(body).encode(), f"Bearer {token}" if token else None,
                                            request_id)
        except Exception as exc:  # the shadow never affects the client; its failure is data
            log.warning("shadow request to v%s failed: %s", shadow, exc)
            status = 599
        if status >= 500:
            await asyncio.to_thread(self._log_failure, shadow, payload, status, True, request_id)

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def predict(request: Request) -> Response:
            if request.path_params["model"] != self.backend.model:
                return JSONResponse({"code": 404, "message": f"no model {request.path_params['model']!r}"}, 404)
            data = await request.body()
            if len(data) > MAX_BODY:
                return JSONResponse({"code": 413, "message": f"body over {MAX_BODY} bytes"}, 413)
            if not self.backend.weights:
                return JSONResponse({"code": 503, "message": "no model version is deployed yet"}, 503)
            version = self._pick()
            given = request.headers.get("x-request-id", "")
            rid = given if _REQUEST_ID.match(given) else f"{self._prefix}-{next(self._counter)}"
            try:
                status, body = await self._forward(version, data, request.headers.get("authorization"), rid)
            except Exception as exc:
                status, body = 502, json.dumps({"code": 502, "message": f"TorchServe: {exc}"}).encode()
            if status >= 500:
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = None
                await asyncio.to_thread(self._log_failure, version, payload, status, False, rid)
            shadow = self.backend.shadow
            if status == 200 and shadow is not None and shadow != version:
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    task = asyncio.get_running_loop().create_task(self._mirror(shadow, payload, version, body, rid))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            return Response(body, status, media_type="application/json",
                            headers={"X-Model-Version": str(version), "X-Request-ID": rid})

        async def ping(request: Request) -> Response:
            return JSONResponse({"status": "Healthy" if self.backend.weights else "Empty"})

        return Starlette(routes=[Route("/predictions/{model}", predict, methods=["POST"]),
                                 Route("/ping", ping, methods=["GET"])])

    def start(self) -> Router:
        import httpx
        import uvicorn

        self._socket = bind("127.0.0.1", 0)
        self._client = httpx.AsyncClient(timeout=self.backend.options.response_timeout + 5)
        config = uvicorn.Config(self.app(), loop="asyncio", access_log=False, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="loopml-torchserve-router", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
