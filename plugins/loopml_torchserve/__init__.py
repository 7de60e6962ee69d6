"""TorchServe serving backend for loopml.

Starts and stops a TorchServe bound to 127.0.0.1 (inference, management and metrics APIs all
local), packages each registered model version as a ``.mar`` with ``torch-model-archiver`` and
loopml's handler (input validated, 4xx for bad requests), registers versions through the
management API, sets the default version on promotion and back on rollback, and unregisters old
ones. TorchServe routes each request to the default version; weighted canary splits are applied
by this backend's ``predict`` (it calls ``/predictions/<model>/<version>``), while clients that call
TorchServe directly get the default version.

TorchServe is in limited maintenance upstream (no new features since 2025); loopml keeps it as the
PyTorch-native option and the built-in server as the default.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.errors import LoopmlError
from loopml.plugins import hookimpl
from loopml.records import ModelVersion
from loopml.specs import BackendSpec

HANDLER = Path(__file__).with_name("handler.py")



def _wait_for_group_exit(pgid: int, timeout: float = 30.0) -> None:
    """Return once no process of TorchServe's session is left (SIGKILL what outlives ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class TorchServeOptions(BaseModel):
    """``[serving] backend = "torchserve"`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    home: Path | None = None  # default: <home>/torchserve (model store, config, logs)
    inference_port: int = 0  # 0: a free port
    management_port: int = 0
    metrics_port: int = 0
    workers: int = 1
    batch_size: int = 1  # TorchServe's server-side batching: requests per handler call
    max_batch_delay_ms: int = 5  # how long TorchServe waits to fill a batch
    token_authorization: bool = True  # TorchServe's API tokens: the backend reads and sends them
    startup_timeout: float = 120.0
    response_timeout: int = 30
    drain_seconds: float = 3.0  # after traffic moves away from a version, wait this long before unregistering it


def _short_temp_root() -> str:
    """/tmp when it exists (short and writable on every Unix), else the platform's temp dir."""
    root = "/tmp"
    return root if os.path.isdir(root) and os.access(root, os.W_OK) else tempfile.gettempdir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, url: str, body: bytes | None = None, timeout: float = 60.0,
             content_type: str = "application/json", token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class TorchServeBackend:
    """ServingBackend over a TorchServe process this backend owns."""

    name = "torchserve"

    def __init__(self, options: TorchServeOptions, home: Path, prediction_log_dir: Path) -> None:
        self.options = options
        self.home = home
        self.prediction_log_dir = prediction_log_dir
        self.store = home / "model-store"
        self.process: subprocess.Popen | None = None
        self.model: str | None = None
        self.weights: dict[int, float] = {}
        self.shadow: int | None = None  # gets a copy of every request through the router
        self.router: Any = None  # loopml's router in front of TorchServe (canary split, shadow)
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._traffic_moved_at = 0.0
        self.ports = {k: getattr(options, f"{k}_port") or _free_port()
                      for k in ("inference", "management", "metrics")}
        # gRPC ports and the first worker port (it names the worker's Unix socket, .ts.sock.<port>)
        # are per instance too, so two TorchServes run side by side on one host.
        self.ports.update({k: _free_port() for k in ("grpc_inference", "grpc_management", "worker")})
        self._keys: dict[str, str] = {}
        self._tmp: Path | None = None

    # ------------------------------------------------------------------ process
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def inference_token(self) -> str | None:
        """The bearer token direct clients of the inference API need (None with token auth off)."""
        return self._keys.get("inference")

    def _manage(self, method: str, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
        return _request(method, self.management_url + path, timeout=timeout, token=self._keys.get("management"))

    def _read_keys(self) -> None:
        """TorchServe writes its generated keys to key_file.json in its working directory."""
        raw = json.loads((self.home / "key_file.json").read_text())
        self._keys = {kind: raw[kind]["key"] for kind in ("management", "inference") if kind in raw}

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise LoopmlError("TorchServe needs Java 11+ on PATH (or JAVA_HOME); install a JDK")
        for sub in ("model-store", "logs"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # The worker's Unix socket (.ts.sock.<port>) and the pid file live in TorchServe's temp dir.
        # A socket path may be at most 107 bytes, so it is a short dir of its own, never under home.
        self._tmp = Path(tempfile.mkdtemp(prefix="loopml-ts-", dir=_short_temp_root()))
        (self.home / "key_file.json").unlink(missing_ok=True)  # keys of an earlier process are stale
        self._keys = {}
        config = self.home / "config.properties"
        config.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.ports['inference']}",
            f"management_address=http://127.0.0.1:{self.ports['management']}",
            f"metrics_address=http://127.0.0.1:{self.ports['metrics']}",
            f"model_store={self.store}",
            "enable_model_api=true",
            f"disable_token_authorization={'false' if self.options.token_authorization else 'true'}",
            "token_expiration_min=5256000",  # the backend holds the keys for the life of the process
            f"grpc_inference_port={self.ports['grpc_inference']}",
            f"grpc_management_port={self.ports['grpc_management']}",
            f"initial_worker_port={self.ports['worker']}",
            f"vmargs=-Djava.io.tmpdir={self._tmp}",
            f"default_workers_per_model={self.options.workers}",
            f"default_response_timeout={self.options.response_timeout}",
            "install_py_dep_per_model=false",
            "disable_system_metrics=true",
        ]) + "\n")
        env = {**os.environ, "TMPDIR": str(self._tmp),  # TorchServe's pid file and worker sockets
               "LOG_LOCATION": str(self.home / "logs"), "METRICS_LOCATION": str(self.home / "logs")}
        self.prediction_log_dir.mkdir(parents=True, exist_ok=True)  # the handler logs there for the monitor
        env["LOOPML_PREDICTION_LOG_DIR"] = str(self.prediction_log_dir)
        exe = shutil.which("torchserve", path=os.path.dirname(sys.executable)) or "torchserve"
        atexit.register(self.stop)  # never leave a Java process behind
        with open(self.home / "logs" / "launcher.log", "w") as log:
            self.process = subprocess.Popen(
                [exe, "--start", "--foreground", "--ncs", "--ts-config", str(config), "--model-store",
                 str(self.store)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.home)
        deadline = time.monotonic() + self.options.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise LoopmlError(f"TorchServe exited at start-up; see {self.home / 'logs'}")
            try:
                if self.options.token_authorization and not self._keys:
                    if not (self.home / "key_file.json").is_file():
                        raise OSError("no key file yet")
                    self._read_keys()
                if _request("GET", self.inference_url + "/ping", timeout=2, token=self.inference_token)[0] == 200:
                    from loopml_torchserve.router import Router

                    self.router = Router(self).start()
                    return
            except (OSError, ValueError, KeyError):  # not up yet, or its key file half-written
                self._keys = {}
            time.sleep(0.5)
        self.stop()
        raise LoopmlError(f"TorchServe did not answer /ping within {self.options.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            _wait_for_group_exit(self.process.pid)  # the JVM and model workers can outlive the launcher
            self.process = None
            self.weights = {}
            self.shadow = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------ archives
    def archive(self, model: ModelVersion, artifact_path: Path) -> Path:
        """Package the artifact as ``<name>-v<version>-<sha256[:16]>.mar`` in the model store: a
        cached archive is reused only for the very same artifact bytes."""
        entity = model.lineage.get("entity") or ""
        key = hashlib.sha256(f"{model.artifact_sha256}/{entity}".encode()).hexdigest()  # artifact + what is logged
        target = self.store / f"{model.name}-v{model.version}-{key[:16]}.mar"
        if target.is_file():
            return target
        self.store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.home) as tmp:
            serialized = Path(tmp) / "model.pt"
            shutil.copyfile(artifact_path, serialized)
            serving = Path(tmp) / "loopml_serving.json"  # what the handler logs besides the features
            serving.write_text(json.dumps({"entity": model.lineage.get("entity")}))
            exe = shutil.which("torch-model-archiver", path=os.path.dirname(sys.executable)) or "torch-model-archiver"
            done = subprocess.run([exe, "--model-name", model.name, "--version", str(model.version),
                                   "--serialized-file", str(serialized), "--handler", str(HANDLER),
                                   "--extra-files", str(serving), "--export-path", tmp, "--force"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise LoopmlError(f"torch-model-archiver failed for {model.ref}: {done.stderr.strip()[-500:]}")
            os.replace(Path(tmp) / f"{model.name}.mar", target)
        return target

    # ------------------------------------------------------------------ ServingBackend
    def deploy(self, model: ModelVersion, artifact_path: Path) -> str:
        if self.model not in (None, model.name):
            raise LoopmlError(f"this TorchServe serves {self.model!r}, not {model.name!r}")
        self.start()
        mar = self.archive(model, Path(artifact_path))
        status, body = self._manage(
            "POST", f"/models?url={mar.name}&initial_workers={self.options.workers}&synchronous=true"
                    f"&batch_size={self.options.batch_size}&max_batch_delay={self.options.max_batch_delay_ms}",
            timeout=self.options.startup_timeout)
        if status not in (200, 201) and b"already registered" not in body.lower() and status != 409:
            raise LoopmlError(f"TorchServe refused {model.ref} (HTTP {status}): {body.decode()[:300]}")
        self.model = model.name
        with self._lock:
            if not self.weights:
                self._set_default(model.version)
                self.weights = {model.version: 1.0}
        return self.router.url if self.router is not None else self.inference_url

    def _set_default(self, version: int) -> None:
        status, body = self._manage("PUT", f"/models/{self.model}/{version}/set-default")
        if status != 200:
            raise LoopmlError(f"TorchServe could not make v{version} the default (HTTP {status}): "
                              f"{body.decode()[:300]}")

    def registered_versions(self) -> list[int]:
        if self.model is None:
            return []
        status, body = self._manage("GET", f"/models/{self.model}/all")
        if status != 200:
            return []
        return sorted(int(float(m["modelVersion"])) for m in json.loads(body))

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        if self.model is None:
            raise LoopmlError("nothing is deployed")
        unknown = set(weights) - set(self.registered_versions())
        if unknown:
            raise LoopmlError(f"cannot route to version(s) {sorted(unknown)}: not registered in TorchServe")
        if not any(w > 0 for w in weights.values()) or any(w < 0 for w in weights.values()):
            raise LoopmlError("traffic weights must be >= 0 and at least one > 0")
        heaviest = max(weights, key=lambda v: weights[v])
        self._set_default(heaviest)  # direct TorchServe clients follow the main version
        with self._lock:
            self.weights = {v: w for v, w in weights.items() if w > 0}
            self._traffic_moved_at = time.monotonic()

    def set_shadow(self, version: int | None) -> None:
        """Mirror every request through the router to ``version`` (None: stop)."""
        if version is not None and version not in self.registered_versions():
            raise LoopmlError(f"cannot shadow version {version}: not registered in TorchServe")
        self.shadow = version

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if self.model is None:
            raise LoopmlError("nothing is deployed")
        with self._lock:
            versions = list(self.weights)
            version = versions[0] if len(versions) == 1 else self._rng.choices(
                versions, weights=[self.weights[v] for v in versions])[0]
        status, body = _request("POST", f"{self.inference_url}/predictions/{self.model}/{version}",
                                json.dumps({"rows": list(rows)}).encode(), token=self._keys.get("inference"))
        if status != 200:
            try:
                message = json.loads(body).get("message", body.decode())
            except ValueError:
                message = body.decode()
            raise LoopmlError(f"prediction failed with HTTP {status}: {message}")
        return json.loads(body)

    def status(self) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            return {"status": "stopped"}
        front = self.router.url if self.router is not None else self.inference_url
        return {"status": "ok", "url": front, "model": self.model,
                "predict_url": f"{front}/predictions/{self.model}",  # canary split and shadow by loopml's router
                "torchserve_url": self.inference_url, "versions": self.registered_versions(),
                "traffic": {str(k): v for k, v in self.weights.items()}, "shadow": self.shadow}

    def undeploy(self, version: int | None = None) -> None:
        if version is None:
            self.stop()
            self.model = None
            return
        if self.weights.get(version, 0) > 0 or self.shadow == version:
            raise LoopmlError(f"version {version} still receives traffic; move traffic first")
        # Requests TorchServe queued for this version before the default moved must finish first:
        # unregistering stops its workers.
        wait = self._traffic_moved_at + self.options.drain_seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        status, body = self._manage("DELETE", f"/models/{self.model}/{version}")
        if status not in (200, 404):
            raise LoopmlError(f"TorchServe could not unregister v{version} (HTTP {status}): {body.decode()[:300]}")

    def smoke_test(self, artifact: bytes, rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
        """Load the artifact through the handler TorchServe will run, and answer one request."""
        from loopml_torchserve.handler import LoopmlHandler

        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "model.pt").write_bytes(artifact)
            context = SimpleNamespace(
                manifest={"model": {"serializedFile": "model.pt", "modelName": "smoke", "modelVersion": "0"}},
                system_properties={"model_dir": tmp})
            try:
                handler = LoopmlHandler()
                handler.initialize(context)
                answer = json.loads(handler.handle([{"body": {"rows": list(rows)}}], context)[0])
            except Exception as exc:
                return False, f"TorchServe's loopml handler cannot serve it: {type(exc).__name__}: {exc}"
        return True, f"loads in the TorchServe handler and answers {len(answer['predictions'])} rows"


def _factory(options: TorchServeOptions, ctx: Any) -> TorchServeBackend:
    import ts  # noqa: F401 - fail early with an install hint if torchserve is missing

    return TorchServeBackend(options, ctx.resolve(options.home, "torchserve"), ctx.home / "predictions")


@hookimpl
def loopml_serving_backends() -> list[BackendSpec]:
    return [BackendSpec("torchserve", _factory, TorchServeOptions,
                        "TorchServe on 127.0.0.1: .mar archives, versioned models, default-version swap",
                        requires=("ts", "model_archiver"))]
