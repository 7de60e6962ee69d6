"""The server in a background thread of this process (the ``builtin`` backend, tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loopml.artifacts import Predictor
from loopml.errors import LoopmlError
from loopml.predlog import PredictionLogWriter
from loopml.serving.app import build_app
from loopml.serving.core import ServingCore
from loopml.serving.requests import ServerLimits
from loopml.serving.routing import Routing
from loopml.serving.transport import bind, check_exposure, uvicorn_config


class ModelServer:
    """The server in a background thread of this process (the ``builtin`` backend, tests)."""

    def __init__(self, model_name: str, *, host: str = "127.0.0.1", port: int = 0, log_dir: Path | None = None,
                 entity: str | None = None, limits: ServerLimits | None = None, log_sink: Any = None,
                 segment_seconds: float = 3600.0, insecure: bool = False) -> None:
        import uvicorn

        check_exposure(host, (limits or ServerLimits()).token, insecure=insecure)
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
