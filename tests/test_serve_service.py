"""`loopml serve`: a process of its own that follows promotions and rollbacks with no failed request,
drains requests in flight on SIGTERM, and speaks the Open Inference Protocol and Prometheus."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from churn_models import GOOD, register_versions
from servers import start, stop

from loopml.context import Workspace
from loopml.examples import churn
from loopml.traffic import TrafficGenerator

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> float:
    """Wait until ``condition()`` is true; returns the seconds it took (fails after ``timeout``)."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose registry holds churn v1 (production) and v2 (approved)."""
    folder = tmp_path_factory.mktemp("served")
    config = churn.init_project(folder, n_customers=300, seed=3)
    register_versions(Workspace.open(config), (1, 2), lineage={"entity": "customer_id"})
    return config


@pytest.fixture
def served(project: Path, tmp_path: Path):
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                  "--poll-seconds", "0.2", "--config", str(project)], log, env=env)
    wait_for(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 120,
             "server start")
    assert proc.poll() is None, log.read_text()[-3000:]
    url = re.search(r"on (http://\S+)", log.read_text()).group(1)
    yield url, proc, log
    stop(proc)


def test_promotion_and_rollback_reach_a_running_server_with_no_failed_request(project: Path, served) -> None:
    url, _proc, _log = served
    ws = Workspace.open(project)
    clients = [TrafficGenerator(url + "/predict", [GOOD]).start() for _ in range(8)]
    try:
        wait_for(lambda: all(c.versions[1] >= 5 for c in clients), 60, "traffic on v1")
        promoted = time.monotonic()
        ws.registry.set_alias("churn", "production", 2, expected=1, actor="test", reason="promote v2")
        took = wait_for(lambda: all(c.versions[2] >= 5 for c in clients), 60, "v2 served")
        result = subprocess.run([sys.executable, "-m", "loopml.cli", "models", "rollback", "churn",
                                 "--expected", "2", "--config", str(project)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        before = [c.versions[1] for c in clients]
        wait_for(lambda: all(c.versions[1] >= b + 5 for c, b in zip(clients, before, strict=True)), 60,
                 "v1 served again")
    finally:
        for c in clients:
            c.stop()
    assert time.monotonic() - promoted < 60 and took < 15, took  # "within a few seconds"
    assert sum(c.sent for c in clients) > 100
    assert sum(c.failed for c in clients) == 0, [c.errors[:2] for c in clients]


def http_exchange(sock: socket.socket, raw: bytes) -> bytes:
    """Send one request on an open connection, read its whole answer (headers and JSON body)."""
    sock.sendall(raw)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_sigterm_drains_keep_alive_clients_and_requests_in_flight(served) -> None:
    """SIGTERM: a request in flight finishes; for the drain period every answer says
    ``Connection: close`` (a keep-alive client is told, not reset) and readiness is 503; then the
    server exits."""
    url, proc, _ = served
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"rows": [GOOD]}).encode()
    raw = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    keep_alive = socket.create_connection((host, int(port)), timeout=30)
    first = http_exchange(keep_alive, raw)
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
    in_flight = socket.create_connection((host, int(port)), timeout=30)
    in_flight.sendall(raw[:-len(body) + 10])
    time.sleep(0.5)  # the request is in flight: headers read, body incomplete
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    in_flight.sendall(body[10:])
    answer = http_exchange(in_flight, b"")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    again = http_exchange(keep_alive, raw)  # the same keep-alive connection, while draining
    assert again.startswith(b"HTTP/1.1 200") and b"connection: close" in again.lower(), again[:300]
    assert keep_alive.recv(1) == b""  # then closed by the server, cleanly
    probe = socket.create_connection((host, int(port)), timeout=30)
    ready = http_exchange(probe, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ready.startswith(b"HTTP/1.1 503") and b'"draining":true' in ready, ready[:300]
    for sock in (keep_alive, in_flight, probe):
        sock.close()
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after draining


@pytest.mark.parametrize("args, env, says", [
    (["nosuch@production", "--port", "0"], {}, "registered models: churn"),
    (["churn@staging", "--port", "0"], {}, "churn has versions, none under 'staging'"),
    (["churn@production", "--port", "0"], {"LOOPML_SERVE_TOKEN": ""}, "LOOPML_SERVE_TOKEN is set but empty"),
    (["churn@production", "--port", "0", "--host", "0.0.0.0"], {}, "--insecure"),
], ids=["unknown model", "unset alias", "empty token", "exposed without a token"])
def test_serve_refuses_what_it_cannot_serve_safely_with_exit_2(project: Path, args, env, says) -> None:
    """Before: an unknown model waited forever, an empty token silently meant no authentication,
    0.0.0.0 without a token was a warning."""
    clean = {k: v for k, v in os.environ.items() if k != "LOOPML_SERVE_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "serve", *args, "--config", str(project)],
                            capture_output=True, text=True, timeout=120, env={**clean, **env})
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_serve_defaults_to_port_8080_and_opens_beyond_loopback_only_when_asked(project: Path) -> None:
    from loopml.serving.follower import build_service

    ws = Workspace.open(project)
    _, _, sock = build_service(ws, "churn@production")
    try:
        assert sock.getsockname()[:2] == ("127.0.0.1", 8080)
    finally:
        sock.close()
    _, _, sock = build_service(ws, "churn@production", host="0.0.0.0", port=0, insecure=True)
    sock.close()
    _, _, sock = build_service(ws, "churn@production", host="0.0.0.0", port=0, token="s3cret")
    sock.close()


def test_open_inference_protocol_with_tritons_http_client(served) -> None:
    import numpy as np
    import tritonclient.http as triton

    url, _, _ = served
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("churn")
    meta = client.get_model_metadata("churn")
    assert {i["name"] for i in meta["inputs"]} == set(GOOD) and meta["outputs"][0]["name"] == "predictions"
    inputs = []
    for name, value in GOOD.items():
        if isinstance(value, str):
            tensor = triton.InferInput(name, [2], "BYTES")
            tensor.set_data_from_numpy(np.array([value, "south"], dtype=object), binary_data=False)
        else:
            tensor = triton.InferInput(name, [2], "FP32")
            tensor.set_data_from_numpy(np.array([value, value], dtype=np.float32), binary_data=False)
        inputs.append(tensor)
    result = client.infer("churn", inputs, outputs=[triton.InferRequestedOutput("predictions", binary_data=False)])
    scores = result.as_numpy("predictions")
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(Exception, match=r"inputs lack"):
        client.infer("churn", inputs[:2])


def test_metrics_count_requests_errors_and_predictions(served) -> None:
    import urllib.request

    from loopml.serving.builtin import post_json

    url, _, _ = served
    assert post_json(url + "/predict", {"rows": [GOOD, GOOD]})[0] == 200
    assert post_json(url + "/predict", {"rows": [{**GOOD, "contract": [3]}]})[0] == 422
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    # refused after routing: counted against the version it was routed to
    assert re.search(r'loopml_requests_total\{model="churn",route="/predict",status="422",version="\d+"\} [1-9]', text)
    assert re.search(r'loopml_requests_total\{model="churn",route="/predict",status="200",version="\d+"\} [1-9]', text)
    assert re.search(r'loopml_prediction_rows_total\{model="churn",version="\d+"\} [2-9]', text)
    assert "loopml_request_latency_seconds_bucket" in text and "loopml_prediction_value_bucket" in text


def test_every_replica_follows_the_rollout_recorded_with_the_canary(project: Path) -> None:
    """A replica whose own config says "canary" still mirrors when the canary was started in shadow
    mode (by a machine whose config says so): the mode travels with the alias, and so does the judge."""
    from loopml import canary as canaries
    from loopml.records import Rollout
    from loopml.serving.core import ServingCore
    from loopml.serving.follower import RegistryFollower

    ws = Workspace.open(project)
    assert ws.config.pipeline is None or ws.config.pipeline.rollout.mode == "canary"
    core = ServingCore("churn")
    follower = RegistryFollower(ws, core, "churn", poll_seconds=0.1)
    production = ws.registry.aliases("churn")["production"]
    canary = 2 if production == 1 else 1
    follower.sync()
    ws.registry.set_alias("churn", "canary", canary, expected=ws.registry.aliases("churn").get("canary"),
                          actor="test", reason="shadow it", rollout=Rollout("shadow"))
    assert follower.sync()
    assert dict(core.routing.weights) == {production: 1.0} and core.health()["shadow"] == canary
    active = canaries.active(ws, "churn")
    assert active is not None and active.rollout == Rollout("shadow")
    ws.registry.set_alias("churn", "canary", canary, expected=canary, actor="test", reason="a share now",
                          rollout=Rollout("canary", 0.3))
    assert follower.sync()
    assert dict(core.routing.weights) == pytest.approx({production: 0.7, canary: 0.3})
    assert core.health()["shadow"] is None
    ws.registry.clear_alias("churn", "canary", expected=canary, actor="test", reason="done")
    assert follower.sync()
    assert dict(core.routing.weights) == {production: 1.0} and set(core.routing.predictors) == {production}


def test_a_canary_alias_gets_its_weight_and_leaves_when_the_alias_goes(project: Path) -> None:
    from loopml.serving.core import ServingCore
    from loopml.serving.follower import RegistryFollower

    ws = Workspace.open(project)
    core = ServingCore("churn")
    follower = RegistryFollower(ws, core, "churn", canary_weight=0.2, poll_seconds=0.1)
    production = ws.registry.aliases("churn")["production"]
    canary = 2 if production == 1 else 1
    follower.sync()
    assert dict(core.routing.weights) == {production: 1.0}
    ws.registry.set_alias("churn", "canary", canary, expected=None, actor="test", reason="try it")
    assert follower.sync()
    assert dict(core.routing.weights) == pytest.approx({production: 0.8, canary: 0.2})
    ws.registry.set_alias("churn", "canary", production, expected=canary, actor="test", reason="enough")
    assert follower.sync()
    assert dict(core.routing.weights) == {production: 1.0} and set(core.routing.predictors) == {production}
