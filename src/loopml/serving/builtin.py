"""The ``builtin`` serving backend: loopml's ASGI model server (:mod:`loopml.serving.app`) for a flow.

The backend runs the server in a thread of the process that deploys (``loopml demo``, ad hoc
pipelines). For a server that outlives a command and follows the registry, run ``loopml serve``
(:mod:`loopml.serve`), which is the same app. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from loopml.artifacts import Predictor, Signature
from loopml.errors import ConfigError, LoopmlError
from loopml.records import ModelVersion
from loopml.serving.requests import ServerLimits, validate_rows
from loopml.serving.runtime import ModelServer

MAX_BODY_BYTES = 1 << 20
MAX_ROWS = 1000


class BuiltinServingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535, description="`loopml serve`: default 8080; the "
                             "loop's in-process server: default 0, a free port")
    insecure: bool = Field(default=False, description="allow binding beyond loopback without a token (put "
                                                      "authentication in front of it yourself)")
    drain_seconds: float = Field(default=5.0, ge=0, description="`loopml serve` on SIGTERM: keep answering "
                                 "this long, every answer closing its connection and readiness 503, before "
                                 "shutting down (keep-alive clients are told, not reset)")
    log_dir: Path | None = None  # default: <home>/predictions
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1)
    max_rows: int = Field(default=MAX_ROWS, ge=1)
    max_string_chars: int = Field(default=256, ge=1, description="longest accepted string value")
    header_timeout: float = Field(default=10.0, gt=0, description="seconds for a request's headers to arrive")
    body_timeout: float = Field(default=10.0, gt=0, description="seconds for a request's body to arrive")
    max_connections: int = Field(default=512, ge=1, description="concurrent connections; more get 503")
    token: SecretStr | None = Field(default=None, description="bearer token clients must send (secret); "
                                                              "default: $LOOPML_SERVE_TOKEN, else none")
    canary_weight: float | None = Field(default=None, ge=0, lt=1, description="`loopml serve`: share of traffic "
                                        "for the version under alias 'canary', overriding the share recorded "
                                        "with the alias in the registry (0: none); default: the recorded one")
    poll_seconds: float = Field(default=2.0, gt=0, description="`loopml serve`: how often the registry is read "
                                "(backing off to once a minute while it is unreachable)")
    registry_wait_seconds: float = Field(default=60.0, ge=0, description="`loopml serve` starting while the "
                                         "registry is unreachable, with no last known good version on this "
                                         "machine: retry this long, then exit 2 saying why")
    log_to_store: bool = Field(default=False, description="upload closed prediction-log segments to the "
                                                          "artifact store; monitors then read the log and keep "
                                                          "their state there (replicas and monitors share no disk)")
    log_segment_seconds: float | None = Field(default=None, gt=0, description="close (and upload) a log segment "
                                              "this long after it opened; default 60 with log_to_store, else 3600")
    explain: bool = Field(default=False, description="answer POST /v2/models/<m>/explain with per-feature "
                          "attributions (Shapley value sampling through Captum; needs loopml[explain])")
    explain_max_rows: int = Field(default=8, ge=1, le=256, description="rows per explain request")
    explain_samples: int = Field(default=16, ge=1, le=512, description="sampled feature orders per row: an "
                                 "explanation costs samples x (features + 1) forward passes per row")
    torch_threads: int = Field(default=1, ge=1, description="`loopml serve`: torch intra-op threads. Requests "
                               "are scored in small micro-batches, where extra threads only spin: on 2 cores, "
                               "2 threads doubled the CPU per request and cut throughput by a fifth")

    def segment_seconds(self) -> float:
        if self.log_segment_seconds is not None:
            return self.log_segment_seconds
        return 60.0 if self.log_to_store else 3600.0

    def limits(self) -> ServerLimits:
        token = serving_token(self.token)
        return ServerLimits(max_body_bytes=self.max_body_bytes, max_rows=self.max_rows,
                            max_string_chars=self.max_string_chars, header_timeout=self.header_timeout,
                            body_timeout=self.body_timeout, max_connections=self.max_connections, token=token,
                            explain=self.explain, explain_max_rows=self.explain_max_rows,
                            explain_samples=self.explain_samples)


def serving_token(configured: SecretStr | None) -> str | None:
    """The bearer token clients must send: ``[serving.options] token``, else $LOOPML_SERVE_TOKEN,
    else none. A token that is set but empty is an error, never "no authentication"."""
    if configured is not None:
        token, source = configured.get_secret_value(), "[serving.options] token"
    elif "LOOPML_SERVE_TOKEN" in os.environ:
        token, source = os.environ["LOOPML_SERVE_TOKEN"], "LOOPML_SERVE_TOKEN"
    else:
        return None
    if not token.strip():
        raise ConfigError(f"{source} is set but empty: give it a token, or unset it to serve without one "
                          "(loopback only)")
    return token


def post_json(url: str, body: Any, timeout: float = 10.0, token: str | None = None) -> tuple[int, dict[str, Any]]:
    """POST JSON and return (status, parsed body), 4xx/5xx included."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
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

    def __init__(self, options: BuiltinServingOptions, log_dir: Path, log_sink: Any = None) -> None:
        self.options = options
        self.prediction_log_dir = log_dir
        self.log_sink = log_sink
        self.server: ModelServer | None = None
        self.feature_lookup: Callable[[list[Any]], Any] | None = None

    def use_online_features(self, lookup: Callable[[list[Any]], Any]) -> None:
        """Answer rows that carry only the entity id with features from the online store."""
        self.feature_lookup = lookup
        if self.server is not None:
            self.server.feature_lookup = lookup

    def serves_in_process(self) -> bool:
        """The server runs in this process (a thread): it stops when the process exits."""
        return True

    @property
    def url(self) -> str:
        if self.server is None:
            raise LoopmlError("the built-in server is not running; deploy a model first")
        return self.server.url

    def deploy(self, model: ModelVersion, artifact_path: Path) -> str:
        predictor = Predictor.from_bytes(Path(artifact_path).read_bytes())
        if self.server is None:
            self.prediction_log_dir.mkdir(parents=True, exist_ok=True)
            self.server = ModelServer(model.name, host=self.options.host, port=self.options.port or 0,
                                      insecure=self.options.insecure,
                                      log_dir=self.prediction_log_dir, entity=model.lineage.get("entity"),
                                      limits=self.options.limits(), log_sink=self.log_sink,
                                      segment_seconds=self.options.segment_seconds()).start()
            self.server.feature_lookup = self.feature_lookup
        elif self.server.model_name != model.name:
            raise LoopmlError(f"this server serves {self.server.model_name!r}, not {model.name!r}")
        self.server.add_version(model.version, predictor)
        return self.server.url

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        if self.server is None:
            raise LoopmlError("nothing is deployed")
        self.server.set_traffic(weights)

    def set_shadow(self, version: int | None) -> None:
        """Mirror every request to ``version`` (None: stop); see :meth:`ServingCore.set_shadow`."""
        if self.server is None:
            raise LoopmlError("nothing is deployed")
        self.server.set_shadow(version)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        status, body = post_json(self.url + "/predict", {"rows": list(rows)}, token=self.options.limits().token)
        if status != 200:
            raise LoopmlError(f"prediction failed with HTTP {status}: {body.get('error')}")
        return body

    def status(self) -> dict[str, Any]:
        if self.server is None:
            return {"status": "stopped"}
        return {"url": self.server.url, "predict_url": self.server.url + "/predict", **self.server.core.health()}

    def flush_log(self) -> None:
        """Wait until every answer so far is in the prediction log (the writer is asynchronous)."""
        if self.server is not None:
            self.server.flush_log()

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
            features = set(predictor.signature.features)
            checked = validate_rows({"rows": [{k: v for k, v in r.items() if k in features} for r in rows]},
                                    predictor.signature, max_rows=MAX_ROWS)
            scores = predictor.predict_rows(checked)
            problem = output_problem(predictor.signature, scores, len(checked))
            if problem:
                return False, f"the model loads but {problem}"
            return True, f"loads in the built-in server and answers {len(scores)} rows"
        except Exception as exc:
            return False, f"the built-in server cannot serve it: {type(exc).__name__}: {exc}"
