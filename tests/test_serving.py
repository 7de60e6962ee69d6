"""The built-in server: 4xx for bad requests (and it keeps serving), versions, canary, hot swap."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.predlog import read_since
from loopml.serving.builtin import post_json
from loopml.serving.runtime import ModelServer
from loopml.stages.monitoring import prediction_window
from loopml.traffic import TrafficGenerator

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month",
        "region": "north"}


@pytest.fixture(scope="module")
def predictors() -> tuple[Predictor, Predictor]:
    data = churn.generate(800, seed=5)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
    from loopml.trainers import train_model

    a = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=3, seed=1)
    b = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=3, seed=2)
    return Predictor.from_bytes(a.artifact), Predictor.from_bytes(b.artifact)


@pytest.fixture
def server(predictors, tmp_path: Path):
    srv = ModelServer("churn", log_dir=tmp_path / "log", entity="customer_id").start()
    srv.add_version(1, predictors[0])
    yield srv
    srv.stop()


def raw(server: ModelServer, body: bytes, content_type: str = "application/json",
        path: str = "/predict") -> tuple[int, dict]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


@pytest.mark.server
def test_binds_loopback_by_default(server: ModelServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")


@pytest.mark.server
def test_a_good_request_is_answered_with_the_model_version_and_logged(server, tmp_path) -> None:
    status, body = post_json(server.url + "/predict", {"rows": [GOOD, {**GOOD, "customer_id": 7}]})
    assert status == 200 and body["version"] == 1 and body["model"] == "churn"
    assert len(body["predictions"]) == 2 and all(0 <= p <= 1 for p in body["predictions"])
    server.flush_log()
    logged, _ = read_since(tmp_path / "log", "churn")
    assert [r["inputs"]["monthly_charges"] for r in logged] == [70.5, 70.5]
    assert [r.get("entity") for r in logged] == [None, 7] and logged[0]["request_id"]


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b'{"rows": [{"tenure_months": NaN}]}', 400, "NaN"),
    (b'{"rows": [{"tenure_months": Infinity}]}', 400, "Infinity"),
    (b'{"rows": []}', 422, "non-empty"),
    (b'[1, 2]', 422, "JSON object"),
    (json.dumps({"rows": [{k: v for k, v in GOOD.items() if k != "monthly_charges"}]}).encode(), 422,
     "rows[0].monthly_charges: missing"),
    (json.dumps({"rows": [{**GOOD, "monthly_charges": "seventy"}]}).encode(), 422,
     'rows[0].monthly_charges: expected a number, got "seventy"'),
    (json.dumps({"rows": [{**GOOD, "support_calls": True}]}).encode(), 422, "rows[0].support_calls"),
    (json.dumps({"rows": [{**GOOD, "contract": [3]}]}).encode(), 422, "rows[0].contract: expected a category"),
    (json.dumps({"rows": [GOOD, {**GOOD, "shoe_size": 3}]}).encode(), 422, "rows[1].shoe_size: unknown field"),
    (json.dumps({"rows": [GOOD] * 1001}).encode(), 422, "at most 1000"),
    (b"x" * (2 << 20), 413, "limit"),
])
@pytest.mark.server
def test_bad_requests_get_4xx_naming_the_problem_and_the_server_keeps_serving(server, body, status, message) -> None:
    got, answer = raw(server, body)
    assert got == status
    assert message in answer["error"]
    assert post_json(server.url + "/predict", {"rows": [GOOD]})[0] == 200


@pytest.mark.server
def test_wrong_content_type_and_route(server) -> None:
    assert raw(server, b"{}", content_type="text/plain")[0] == 415
    assert raw(server, b"{}", path="/nope")[0] == 404


@pytest.mark.server
def test_canary_split_follows_the_weights(server, predictors) -> None:
    server.add_version(2, predictors[1])
    server.set_traffic({1: 0.8, 2: 0.2})
    traffic = TrafficGenerator(server.url + "/predict", [GOOD])
    traffic.send(500)
    assert traffic.failed == 0
    share = traffic.versions[2] / traffic.sent
    assert 0.14 < share < 0.26


@pytest.mark.server
def test_hot_swap_under_concurrent_load_drops_no_request(server, predictors) -> None:
    clients = [TrafficGenerator(server.url + "/predict", [GOOD]).start() for _ in range(8)]
    try:
        for swap in range(20):
            # Every client answered a few more requests since the last swap: traffic is flowing
            # from all eight at once when the version changes (counted, not timed).
            before = [c.sent for c in clients]
            deadline = time.monotonic() + 120
            while not all(c.sent >= b + 3 for c, b in zip(clients, before, strict=True)):
                assert time.monotonic() < deadline, "clients stalled"
                time.sleep(0.005)
            old, new = (1, 2) if swap % 2 == 0 else (2, 1)
            server.add_version(new, predictors[new - 1])
            server.set_traffic({new: 1.0})
            server.remove_version(old)
    finally:
        for c in clients:
            c.stop()
    assert sum(c.sent for c in clients) >= 8 * 20 * 3
    assert sum(c.failed for c in clients) == 0, [c.errors[:3] for c in clients]
    assert all(set(c.versions) == {1, 2} for c in clients)


@pytest.mark.server
def test_health_and_metadata(server) -> None:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    conn.request("GET", "/metadata")
    meta = json.loads(conn.getresponse().read())
    assert health["status"] == "ok" and health["versions"] == [1]
    assert meta["versions"]["1"]["categorical"] == ["contract", "region"]


@pytest.mark.server
def test_rows_with_only_the_entity_id_use_online_features(server) -> None:
    online = {7: GOOD}

    def lookup(ids):  # the server's lookup contract: one row of features per id, None where unknown
        return [{"customer_id": i, **online.get(i, dict.fromkeys(GOOD))} for i in ids]

    server.feature_lookup = lookup
    status, body = post_json(server.url + "/predict", {"rows": [{"customer_id": 7}, GOOD]})
    assert status == 200 and body["predictions"][0] == pytest.approx(body["predictions"][1])
    status, body = post_json(server.url + "/predict", {"rows": [{"customer_id": 8}]})
    assert status == 404 and "customer_id=8" in body["error"]


def test_the_monitor_reads_the_log_where_the_configured_backend_writes_it(project) -> None:
    from loopml.context import Workspace
    from loopml.examples import churn

    churn.init_project(project / "p", n_customers=50)
    with open(project / "p" / "loopml.toml", "a") as config:
        config.write('\n[serving]\nbackend = "builtin"\n[serving.options]\nlog_dir = "serving-logs"\n')
    ws = Workspace.open(project / "p" / "loopml.toml")
    assert ws.serving.prediction_log_dir == (project / "p" / "serving-logs").resolve()
    ws.serving.prediction_log_dir.mkdir(parents=True)
    line = {"ts": 10.0, "version": 3, "inputs": GOOD, "output": 0.25, "latency_ms": 1.5}
    (ws.serving.prediction_log_dir / "churn.jsonl").write_text(json.dumps(line) + "\n")
    window = prediction_window(ws, "churn", since=5.0)
    assert window.inputs.to_dict("records") == [GOOD]
    assert (window.outputs, window.latency_ms, window.versions) == ((0.25,), (1.5,), (3,))
    assert prediction_window(ws, "churn", since=11.0).inputs.empty


def test_a_monitor_run_survives_a_torn_last_line_a_corrupt_line_and_a_foreign_record(project) -> None:
    from loopml.context import Workspace
    from loopml.examples import churn

    churn.init_project(project / "p", n_customers=50)
    ws = Workspace.open(project / "p" / "loopml.toml")
    ws.serving.prediction_log_dir.mkdir(parents=True, exist_ok=True)
    good = {"ts": 10.0, "version": 3, "inputs": GOOD, "output": 0.25, "latency_ms": 1.5}
    (ws.serving.prediction_log_dir / "churn.jsonl").write_text(
        json.dumps(good) + "\n"
        + "{not json\n"                                                  # a corrupt line
        + json.dumps({"ts": 11.0, "version": "v?", "output": 1}) + "\n"  # JSON, but not a prediction
        + json.dumps(good)[:25])                                         # a writer died mid-line
    assert prediction_window(ws, "churn").versions == (3,)  # a scheduled run, by cursor
    assert prediction_window(ws, "churn").versions == ()    # and the next one
    first = prediction_window(ws, "churn", since=0.0)
    assert first.versions == (3,) and first.inputs.to_dict("records") == [GOOD]
    assert [t.timestamp() for t in first.span] == [10.0, 10.0]


@pytest.mark.server
@pytest.mark.training
def test_a_request_takes_the_values_the_training_csv_held(tmp_path) -> None:
    """A 0/1 column declared as a category was read as text by ingest ("0", "1"): a client sending
    the CSV's own 0 and 1 (or "12" for a number) gets the same answer as with the text."""
    import numpy as np
    import pandas as pd

    from loopml.trainers import train_model

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 400).astype(float),
                          "female": rng.integers(0, 2, 400).astype(str)})  # what ingest stored
    frame["label"] = ((frame["female"] == "1") ^ (frame["age"] > 50)).astype(int)
    predictor = Predictor.from_bytes(train_model(frame, "label", ("age",), ("female",), epochs=2).artifact)
    srv = ModelServer("m", log_dir=tmp_path / "log").start()
    try:
        srv.add_version(1, predictor)
        as_text = post_json(srv.url + "/predict", {"rows": [{"age": 30, "female": "1"}, {"age": 60, "female": "0"}]})
        as_csv = post_json(srv.url + "/predict", {"rows": [{"age": "30", "female": 1}, {"age": 60.0, "female": 0.0}]})
        assert as_text[0] == as_csv[0] == 200, as_csv
        assert as_csv[1]["predictions"] == as_text[1]["predictions"]
        status, body = post_json(srv.url + "/predict", {"rows": [{"age": 30, "female": None}]})
        assert status == 422 and "rows[0].female" in body["error"]
    finally:
        srv.stop()
