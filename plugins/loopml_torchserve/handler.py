"""TorchServe handler for loopml model archives.

Runs inside TorchServe's Python worker. It loads the artifact (a ``torch.export`` program with
its JSON signature, or a loopml 0.1 TorchScript file) with loopml's own loader, the one the built-in
server and validation use, checks every request with the same validation as the
built-in server, and answers bad input with a 4xx naming the field (``PredictionException``), so
TorchServe keeps serving. Each answer names the model and version that produced it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from loopml import prediction_records
from loopml.artifacts import Predictor
from loopml.predlog import append_segment
from loopml.serving.builtin import MAX_ROWS
from loopml.serving.requests import RequestError, validate_rows


class LoopmlHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.predictor: Any = None
        self.model = ""
        self.version = 0
        self.entity: str | None = None  # the entity id column, logged with each row when sent

    def initialize(self, context: Any) -> None:
        manifest = context.manifest["model"]
        model_dir = Path(context.system_properties["model_dir"])
        self.predictor = Predictor.from_bytes((model_dir / manifest["serializedFile"]).read_bytes())
        self.model = manifest["modelName"]
        self.version = int(float(manifest.get("modelVersion", "0")))
        serving = model_dir / "loopml_serving.json"
        if serving.is_file():
            self.entity = json.loads(serving.read_text()).get("entity") or None
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        from ts.utils.util import PredictionException

        batch: list[list[dict[str, Any]]] = []
        shadows: list[dict[str, Any] | None] = []
        request_ids: list[str | None] = []
        extra = (self.entity,) if self.entity else ()
        for idx, request in enumerate(data):  # with TorchServe batching, one bad request fails its whole batch
            body = request.get("body", request.get("data"))
            try:
                if isinstance(body, bytes | bytearray):
                    try:
                        body = json.loads(body, parse_constant=_reject_constant)
                    except ValueError as exc:
                        raise RequestError(400, f"body is not valid JSON: {exc}") from None
                # loopml's router tags mirrored copies: {"loopml": {"shadow_of", "primary_outputs"}}
                tag = body.get("loopml") if isinstance(body, dict) else None
                shadows.append(tag if isinstance(tag, dict) and "shadow_of" in tag else None)
                batch.append(validate_rows(body, self.predictor.signature, max_rows=MAX_ROWS, extra_allowed=extra))
                request_ids.append(_request_id(context, idx))
            except RequestError as exc:
                raise PredictionException(str(exc), exc.status) from None
        started = time.perf_counter()
        scores = self.predictor.predict_rows([row for rows in batch for row in rows])  # one call per batch
        per_row_ms = (time.perf_counter() - started) * 1000 / max(len(scores), 1)
        answers, start = [], 0
        for rows, shadow, rid in zip(batch, shadows, request_ids, strict=True):
            answer = self.predictor.answer(scores[start:start + len(rows)])
            start += len(rows)
            self._log(rows, answer, per_row_ms, shadow, rid)
            answers.append(json.dumps({"model": self.model, "version": self.version, **answer}))
        return answers

    def _log(self, rows: list[dict[str, Any]], answer: dict[str, Any], latency_ms: float,
             shadow: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        """Append to the prediction log the monitor reads: the same records and segment layout as the
        built-in server, one segment per worker process and hour."""
        folder = os.environ.get("LOOPML_PREDICTION_LOG_DIR")
        if not folder:
            return
        records = prediction_records.answered(
            ts=time.time(), version=self.version, request_id=request_id, features=self.predictor.signature.features,
            rows=rows, answer=answer, latency_ms=latency_ms, entity=self.entity, shadow=shadow is not None,
            primary_version=(shadow or {}).get("shadow_of"), primary_outputs=(shadow or {}).get("primary_outputs"))
        append_segment(Path(folder), self.model, prediction_records.encode(records))


def _request_id(context: Any, idx: int) -> str | None:
    """The client's (or loopml's router's) X-Request-ID, else TorchServe's own id for the request."""
    try:
        given = context.get_request_header(idx, "X-Request-ID") or context.get_request_header(idx, "x-request-id")
        return str(given) if given else context.get_request_id(idx)
    except Exception:  # a context without headers (tests, older TorchServe)
        return None


def _reject_constant(name: str) -> float:
    raise RequestError(400, f"JSON literal {name} is not allowed; send finite numbers only")


_service = LoopmlHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """TorchServe's entry point."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
