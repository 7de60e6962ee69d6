"""The model server under hostile input: every bad request is a JSON 4xx naming the problem, slow or
lying clients are cut off, and the server keeps answering good requests throughout."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import pytest
from malformed_requests import GOOD, battery, request, rows

from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.serving.builtin import post_json
from loopml.serving.requests import ServerLimits, json_depth
from loopml.serving.runtime import ModelServer
from loopml.trainers import train_model

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
LIMITS = ServerLimits(header_timeout=1.0, body_timeout=1.0, max_connections=64)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    data = churn.generate(400, seed=5)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
    return Predictor.from_bytes(train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=1).artifact)


@pytest.fixture(scope="module")
def online_store(tmp_path_factory):
    """The embedded online store holding customers 0 to 399 (what `loopml serve` looks ids up in)."""
    from datetime import UTC, datetime

    from loopml.backends.local_features import LocalFeatureStore

    store = LocalFeatureStore(tmp_path_factory.mktemp("features"))
    store.apply(VIEW, churn.generate(400, seed=5).activity)
    store.materialize(VIEW.name, datetime.now(UTC))
    return store


@pytest.fixture
def server(predictor, online_store, tmp_path):
    srv = ModelServer("churn", log_dir=tmp_path / "log", limits=LIMITS, entity="customer_id").start()
    srv.feature_lookup = lambda ids: online_store.online_rows(VIEW.name, ids)
    srv.add_version(1, predictor)
    yield srv
    srv.stop()


def exchange(server: ModelServer, raw: bytes, timeout: float = 15.0) -> tuple[int, dict]:
    """Send raw bytes, read one HTTP answer; (status, JSON body). (0, {}) if the server closed."""
    def complete(data: bytes) -> bool:
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        return length is not None and len(body) >= length

    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(raw)
        data = read_all(sock, timeout, until=complete)
    if not data:
        return 0, {}
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body or b"{}")


BATTERY = [
    ("malformed JSON", request("POST", "/predict", b"{not json"), 400, "not valid JSON"),
    ("NaN literal", request("POST", "/predict", b'{"rows": [{"tenure_months": NaN}]}'), 400, "NaN"),
    ("deeply nested JSON", request("POST", "/predict", b"[" * 50_000 + b"]" * 50_000), 400, "nested deeper"),
    ("deep inside a row", request("POST", "/predict", rows({**GOOD, "region": [[[[[[[[[[[[]]]]]]]]]]]]})),
     422, "rows[0].region: expected a category"),
    ("400-digit integer", request("POST", "/predict", b'{"rows": [{"tenure_months": 1' + b"0" * 400 + b"}]}"),
     422, "outside the float32 range"),
    ("5000-digit integer", request("POST", "/predict", b'{"rows": [{"tenure_months": 1' + b"0" * 5000 + b"}]}"),
     400, "not valid JSON"),
    ("1e39 overflows float32", request("POST", "/predict", rows({**GOOD, "monthly_charges": 1e39})), 422,
     "outside the float32 range"),
    ("500 KB category string", request("POST", "/predict", rows({**GOOD, "region": "r" * 500_000})), 422,
     "at most 256"),
    ("wrong type", request("POST", "/predict", rows({**GOOD, "contract": {"a": 3}})), 422, "expected a category"),
    ("unknown field", request("POST", "/predict", rows({**GOOD, "shoe": 1})), 422, "rows[0].shoe: unknown field"),
    ("missing field", request("POST", "/predict", rows({k: v for k, v in GOOD.items() if k != "region"})), 422,
     "rows[0].region: missing"),
    ("empty rows", request("POST", "/predict", b'{"rows": []}'), 422, "non-empty"),
    ("not an object", request("POST", "/predict", b"[1, 2]"), 422, "JSON object"),
    ("too many rows", request("POST", "/predict", rows(*[GOOD] * 1001)), 422, "at most 1000"),
    ("body over the limit", request("POST", "/predict", b"x" * (2 << 20)), 413, "limit"),
    ("declared over the limit, not sent", request("POST", "/predict", b"", {"Content-Length": str(50 << 20)}),
     413, "limit"),
    ("negative Content-Length", request("POST", "/predict", b"{}", {"Content-Length": "-1"}), 400, ""),
    ("non-numeric Content-Length", request("POST", "/predict", b"{}", {"Content-Length": "ten"}), 400, ""),
    ("body shorter than Content-Length", request("POST", "/predict", b'{"rows"', {"Content-Length": "100"}), 408,
     "did not arrive"),
    ("no Content-Length", request("POST", "/predict", b"").replace(b"Content-Length: 0\r\n", b""), 411,
     "Content-Length"),
    ("text/plain", request("POST", "/predict", rows(GOOD), {"Content-Type": "text/plain"}), 415, "Content-Type"),
    ("PUT", request("PUT", "/predict", rows(GOOD)), 405, "method PUT is not allowed"),
    ("DELETE", request("DELETE", "/predict"), 405, "method DELETE"),
    ("OPTIONS", request("OPTIONS", "/predict"), 405, "method OPTIONS"),
    ("GET on /predict", request("GET", "/predict"), 405, "method GET"),
    ("unknown route", request("GET", "/admin"), 404, "no route"),
    ("OIP unknown model", request("POST", "/v2/models/other/infer", b"{}"), 404, "no model 'other'"),
    ("OIP unknown version", request("POST", "/v2/models/churn/versions/9/infer", b"{}"), 404, "not served"),
    ("OIP wrong tensors", request("POST", "/v2/models/churn/infer", b'{"inputs": [{"name": "x"}]}'), 422,
     "not an input"),
    ("OIP binary tensors", request("POST", "/v2/models/churn/infer", b"{}", {"Inference-Header-Content-Length": "2"}),
     415, "binary"),
]


@pytest.mark.server
def test_malformed_request_battery(server) -> None:
    """Every case answers its 4xx with a JSON reason, and a good request succeeds after each."""
    cases = BATTERY + battery()
    answered_4xx = 0
    for name, raw, status, message in cases:
        got, body = exchange(server, raw)
        assert got == status, (name, got, body)
        assert 400 <= got < 500
        if message:
            assert message in body.get("error", ""), (name, body)
        answered_4xx += 1
        assert post_json(server.url + "/predict", {"rows": [GOOD]})[0] == 200, f"stopped serving after {name}"
    assert answered_4xx == len(cases) >= 150
    by_entity = post_json(server.url + "/predict", {"rows": [{"customer_id": 7}]})
    assert by_entity[0] == 200, by_entity  # the lookup still answers after the bad ids


@pytest.mark.server
def test_slow_clients_are_cut_off_and_do_not_block_others(server) -> None:
    """Slowloris: 20 connections trickling header bytes are closed; good requests go on meanwhile."""
    slow = []
    for _ in range(20):
        sock = socket.create_connection(server.address, timeout=30)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        try:
            while not stop.is_set():
                sock.sendall(b"X-a: b\r\n")
                time.sleep(0.2)
        except OSError:
            pass

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in slow]
    for t in threads:
        t.start()
    assert post_json(server.url + "/predict", {"rows": [GOOD]})[0] == 200
    closed = 0
    for sock in slow:
        sock.settimeout(30)
        try:
            data = sock.recv(65536)
            closed += data.startswith(b"HTTP/1.1 408") or data == b""
        except OSError:
            closed += 1
    stop.set()
    for sock in slow:
        sock.close()
    assert closed == 20


@pytest.mark.server
def test_connections_past_the_cap_get_503_not_a_hang(predictor, tmp_path) -> None:
    srv = ModelServer("churn", limits=ServerLimits(max_connections=4, header_timeout=30, body_timeout=30)).start()
    srv.add_version(1, predictor)
    holders = []
    try:
        for _ in range(6):  # requests in flight: headers sent, body pending
            sock = socket.create_connection(srv.address, timeout=30)
            sock.sendall(request("POST", "/predict", b"", {"Content-Length": "10"}))
            holders.append(sock)
        # Wait for answers, however long the machine takes: only refused connections can answer,
        # since the others have not sent their body yet.
        answered: set[socket.socket] = set()
        deadline = time.monotonic() + 60
        while len(answered) < 2 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in holders if s not in answered], [], [], 1.0)
            answered.update(readable)
        refused = sorted(holders.index(sock) for sock in answered)
        assert refused == [4, 5]  # the 5th and 6th connection, answered before their body
        for index in refused:
            status, body = read_answer(holders[index])
            assert status == 503 and "connections are open" in body["error"]
        for sock in holders[:4]:  # held, not refused: they are answered once their body arrives
            sock.sendall(b"{not json}")
            assert read_answer(sock)[0] == 400
    finally:
        for sock in holders:
            sock.close()
    assert post_json(srv.url + "/predict", {"rows": [GOOD]})[0] == 200  # capacity is back
    srv.stop()


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    """One whole answer (status, JSON body); waits as long as the answer takes."""
    sock.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body or b"{}")


@pytest.mark.server
def test_bearer_token_is_required_and_never_echoed(predictor, caplog, capfd) -> None:
    caplog.set_level(logging.DEBUG)  # every logger at every level: a token logged at DEBUG leaks too
    secret = "CANARY-serve-token-91d2"
    srv = ModelServer("churn", limits=ServerLimits(token=secret)).start()
    srv.add_version(1, predictor)
    try:
        status, body = post_json(srv.url + "/predict", {"rows": [GOOD]})
        assert status == 401 and "bearer token" in body["error"]
        assert post_json(srv.url + "/predict", {"rows": [GOOD]}, token="wrong")[0] == 401
        assert post_json(srv.url + "/predict", {"rows": [GOOD]}, token=secret)[0] == 200
        import urllib.request

        with urllib.request.urlopen(srv.url + "/v2/health/ready", timeout=10) as resp:  # probes need no token
            assert resp.status == 200
    finally:
        srv.stop()
    printed = capfd.readouterr()
    assert secret not in caplog.text and secret not in printed.out + printed.err
    assert caplog.records  # the server did log at DEBUG/INFO: the check above had lines to look at


@pytest.mark.server
def test_binding_beyond_loopback_needs_a_token_or_an_explicit_opt_out(predictor, caplog) -> None:
    from loopml.errors import ConfigError

    with pytest.raises(ConfigError, match="--insecure"):
        ModelServer("churn", host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="loopml.serving"):
        srv = ModelServer("churn", host="0.0.0.0", insecure=True).start()
        srv.stop()
    assert "WITHOUT a token" in caplog.text
    srv = ModelServer("churn", host="0.0.0.0", limits=ServerLimits(token="t0ken")).start()
    srv.stop()


@pytest.mark.server
def test_unknown_categories_are_counted_and_logged_as_such(server, tmp_path) -> None:
    import urllib.request

    from loopml.predlog import read_since

    assert post_json(server.url + "/predict", {"rows": [{**GOOD, "region": "atlantis"}]})[0] == 200
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    assert 'loopml_unknown_category_total{feature="region",model="churn"} 1.0' in metrics
    server.flush_log()
    records, _ = read_since(tmp_path / "log", "churn")
    assert records[-1]["unknown"] == ["region"]


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[[[", "b": [1, {"c": 2}]}') == 3


def read_all(sock: socket.socket, timeout: float = 60.0, until=lambda data: False) -> bytes:  # type: ignore[no-untyped-def]
    """What the server sends until ``until(data)``, or it closes the connection, or ``timeout`` passes."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        if until(data):
            break
    return data


def statuses(data: bytes) -> list[int]:
    import re

    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


@pytest.mark.server
@pytest.mark.parametrize("good", [1, 2, 3])
def test_pipelined_requests_are_each_answered_before_the_malformed_one(server, good: int) -> None:
    """Good requests followed by garbage in one packet: each good one gets its 200, in order, then
    the 400 (before: only the 400 came back, 9 times out of 9)."""
    for _ in range(3):
        with socket.create_connection(server.address, timeout=60) as sock:
            sock.sendall(request("POST", "/predict", rows(GOOD)) * good + b"GARBAGE \x00\r\n\r\n")
            data = read_all(sock)
        assert statuses(data) == [200] * good + [400], data[-300:]
        assert data.count(b'"predictions"') == good


@pytest.mark.server
def test_oversized_headers_are_refused_without_holding_memory(server) -> None:
    """30 clients sending 8 MB of headers each get 431; the server does not buffer them (before:
    200, and +226 MB held while they stalled) and answers good requests meanwhile."""
    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    before = rss_mb()
    answers: list[int] = []

    def oversized() -> None:
        with socket.create_connection(server.address, timeout=60) as sock:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                for _ in range(8 * 16):  # 8 MB in 64 KB header lines
                    sock.sendall(b"X-Pad: " + b"a" * (64 << 10) + b"\r\n")
            except OSError:
                pass  # refused and closed mid-send: the answer is already waiting to be read
            answers.extend(statuses(read_all(sock)) or [0])

    threads = [threading.Thread(target=oversized) for _ in range(30)]
    for t in threads:
        t.start()
    assert post_json(server.url + "/predict", {"rows": [GOOD]})[0] == 200
    for t in threads:
        t.join(120)
    assert answers.count(431) >= 25, answers  # a client may see its reset before the answer, never a 200
    assert 200 not in answers
    assert rss_mb() - before < 100, f"RSS grew from {before:.0f} to {rss_mb():.0f} MB"
    print(f"30 x 8 MB of headers: {answers.count(431)} answered 431, RSS {before:.0f} -> {rss_mb():.0f} MB")
    text = urllib_get(server.url + "/metrics")
    assert 'route="unrouted",status="431"' in text


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


@pytest.mark.server
@pytest.mark.parametrize("raw", [
    request("POST", "/predict", headers={"Content-Type": "text/plain", "Content-Length": "1000"}),
    request("POST", "/nowhere", headers={"Content-Length": "1000"}),
    request("PUT", "/predict", headers={"Content-Length": "1000"}),
    request("GET", "/health", headers={"Content-Length": "1000"}),
], ids=["415", "404", "405", "health with a body"])
def test_an_early_answer_does_not_let_a_trickling_body_hold_the_connection(server, raw: bytes) -> None:
    """The route answers without reading the body; the client trickles it a byte at a time. The
    connection is closed once the body deadline passes (before: open for as long as it trickled)."""
    with socket.create_connection(server.address, timeout=60) as sock:
        sock.sendall(raw)
        closed = False
        deadline = time.monotonic() + 60  # LIMITS.body_timeout is 1 s: far within this
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"x")
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    chunk = sock.recv(65536)
                    closed = chunk == b""
            except OSError:
                closed = True
        assert closed, "the server kept a trickling early-answered connection open for 60 s"
    assert post_json(server.url + "/predict", {"rows": [GOOD]})[0] == 200


@pytest.mark.server
def test_request_latency_covers_reading_the_body_and_every_status_is_counted(predictor, tmp_path) -> None:
    """The latency histogram times the whole request (here, a body sent in two parts 0.5 s apart),
    the model's own share is a separate histogram, and answers given before routing are counted."""
    srv = ModelServer("churn", limits=ServerLimits(body_timeout=30, header_timeout=30)).start()
    srv.add_version(1, predictor)
    try:
        body = rows(*[GOOD] * 50)
        with socket.create_connection(srv.address, timeout=60) as sock:
            raw = request("POST", "/predict", body)
            sock.sendall(raw[:-10])
            time.sleep(0.5)
            sock.sendall(raw[-10:])
            assert read_answer(sock)[0] == 200
        assert exchange(srv, b"GARBAGE\r\n\r\n")[0] == 400
        text = urllib_get(srv.url + "/metrics")
    finally:
        srv.stop()

    def metric(name: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(name))
        return float(line.rsplit(" ", 1)[1])

    assert metric('loopml_request_latency_seconds_sum{model="churn",version="1"}') >= 0.5
    assert metric('loopml_model_latency_seconds_sum{model="churn",version="1"}') < 0.5
    assert metric('loopml_requests_total{model="churn",route="/predict",status="200",version="1"}') == 1
    assert metric('loopml_requests_total{model="churn",route="unrouted",status="400",version=""}') == 1


class FailingModel:
    """A served version whose model raises on valid rows (a corrupted weight, an op that fails)."""

    def __init__(self, inner: Predictor) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def predict_rows(self, rows):
        raise RuntimeError("the model failed")


@pytest.mark.server
def test_server_errors_and_refusals_are_counted_against_the_version_they_were_routed_to(predictor) -> None:
    """A dashboard splits 5xx by version: a model that raises is a 500 of its own version, a row
    refused after routing a 422 of that version; the server keeps serving the good version."""
    srv = ModelServer("churn").start()
    srv.add_version(1, predictor)
    srv.add_version(2, FailingModel(predictor))
    try:
        srv.set_traffic({2: 1.0})
        status, answer = exchange(srv, request("POST", "/predict", rows(GOOD)))
        assert status == 500 and "RuntimeError" in json.dumps(answer)
        assert exchange(srv, request("POST", "/predict", rows({**GOOD, "tenure_months": "many"})))[0] == 422
        srv.set_traffic({1: 1.0})
        assert exchange(srv, request("POST", "/predict", rows(GOOD)))[0] == 200
        text = urllib_get(srv.url + "/metrics")
    finally:
        srv.stop()
    counted = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line.startswith("loopml_requests_total{")}
    assert counted == {'loopml_requests_total{model="churn",route="/predict",status="500",version="2"}': 1,
                       'loopml_requests_total{model="churn",route="/predict",status="422",version="2"}': 1,
                       'loopml_requests_total{model="churn",route="/predict",status="200",version="1"}': 1}


@pytest.mark.server
def test_a_port_in_use_is_one_clear_error(tmp_path) -> None:
    import socket

    from loopml.errors import ConfigError
    from loopml.serving.transport import bind

    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*choose another with --port"):
            bind("127.0.0.1", port)
    finally:
        taken.close()
    assert isinstance(bind("127.0.0.1", 0), socket.socket)
