"""The MLflow tracker plugin, checked with MLflow's own client and loaders: against a SQLite
tracking store, and against a real ``mlflow server`` over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from loop_steps import train_and_validate
from servers import mlflow_server

from loopml.context import BackendContext
from loopml.records import RunInfo
from loopml.stages.drift_check import drift_reference
from loopml.stages.release import register_and_promote
from loopml.testing import TrackerSuite

pytestmark = pytest.mark.slow


def make_tracker(tmp_path: Path):
    from loopml_mlflow import MlflowOptions, _factory

    return _factory(MlflowOptions(), BackendContext("t", tmp_path, tmp_path / ".loopml"))


class TestMlflowTracker(TrackerSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, tmp_path_factory: pytest.TempPathFactory):
        return make_tracker(tmp_path_factory.mktemp("mlflow"))  # SQLite migrations run once

    @pytest.fixture
    def tracker(self, shared):
        return shared


def test_mlflow_client_finds_the_run_its_metric_history_tags_and_artifacts(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracker = make_tracker(tmp_path)
    run = RunInfo("loopml-run-1", "churn", "train-abc", {"loopml.dataset.labels": "labels@123"})
    tracker.start_run(run)
    tracker.log_params("loopml-run-1", {"epochs": 3, "lr": 0.01})
    for step, loss in enumerate([0.9, 0.6, 0.4]):
        tracker.log_metrics("loopml-run-1", {"train_loss": loss}, step=step)
    tracker.set_tags("loopml-run-1", {"loopml.git_commit": "abc123", "loopml.registry_version": "churn:v4"})
    card = tmp_path / "model_card.md"
    card.write_text("# churn v4")
    tracker.log_artifact("loopml-run-1", card)
    tracker.end_run("loopml-run-1")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / '.loopml' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("churn")
    (found,) = client.search_runs([experiment.experiment_id], "tags.`loopml.run_id` = 'loopml-run-1'")
    assert found.info.status == "FINISHED" and found.info.run_name == "train-abc"
    assert found.data.params == {"epochs": "3", "lr": "0.01"}
    assert found.data.tags["loopml.dataset.labels"] == "labels@123"
    assert found.data.tags["loopml.registry_version"] == "churn:v4"
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.6), (2, 0.4)]
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["model_card.md"]
    assert (tmp_path / ".loopml" / "mlflow-artifacts").is_dir()  # not ./mlruns in the cwd


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


class TestMlflowTrackerOverHttp(TrackerSuite):
    @pytest.fixture
    def tracker(self, server, tmp_path):
        from loopml_mlflow import MlflowOptions, _factory

        return _factory(MlflowOptions(tracking_uri=server), BackendContext("t", tmp_path, tmp_path / ".loopml"))


def test_the_loop_on_an_mlflow_server_is_native_to_mlflow(server, tmp_path: Path, monkeypatch) -> None:
    """Train, validate, register, promote and roll back with MLflow as tracker, then read everything
    back with MLflow's own client and loaders only."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from loopml.artifacts import Predictor
    from loopml.context import Workspace
    from loopml.examples import churn

    churn.init_project(tmp_path, n_customers=600, seed=3)
    config = tmp_path / "loopml.toml"
    config.write_text(config.read_text() + f'\n[trackers.mlflow]\ntracking_uri = "{server}"\n')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    ws = Workspace.open(config, profile="ci")
    candidate, evaluation, key, baseline = train_and_validate(ws)
    v1, _ = register_and_promote(ws, candidate, evaluation.report, key, baseline)
    client = MlflowClient(server)

    # The run: inputs, standard tags, per-epoch curves, and the gate numbers as metrics.
    [run] = client.search_runs([client.get_experiment_by_name("churn").experiment_id],
                               filter_string=f"tags.`loopml.run_id` = '{candidate.run_id}'")
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"labels", "activity"}
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) > 1
    assert run.data.metrics["holdout_auc"] == pytest.approx(evaluation.report.metrics["auc"])
    gated = {f"gate_{c.name}": c.value for c in evaluation.report.checks if isinstance(c.value, float)}
    assert len(gated) >= 3 and {k: run.data.metrics[k] for k in gated} == pytest.approx(gated)
    assert {"model_card.md", "validation_report.html", "model.pt2"} <= {a.path for a in client.list_artifacts(
        run.info.run_id)}
    # Artifacts went through the server to its store, never to the trainer's disk.
    assert client.get_experiment_by_name("churn").artifact_location.startswith("mlflow-artifacts:")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert not (tmp_path / ".loopml" / "mlflow-artifacts").exists()

    # The model: an MLflow model with a pyfunc flavour, loaded by MLflow, answering like loopml.
    rows = pd.DataFrame(drift_reference(ws, v1)).drop(columns=["model_output"], errors="ignore").head(20)
    expected = Predictor.from_bytes(ws.store.get(v1.artifact_key)).predict_frame(rows).reshape(-1)
    for uri in (f"runs:/{run.info.run_id}/model", "models:/churn@production", "models:/churn/1"):
        got = mlflow.pyfunc.load_model(uri).predict(rows)
        assert list(got) == pytest.approx(list(expected), abs=1e-6), uri

    # The registry mirror follows loopml: versions by loopml.version, aliases after every move.
    [registered] = [m for m in client.search_registered_models() if m.name == "churn"]
    assert registered.aliases == {"production": "1"}
    assert v1.status == "approved"
    v2 = ws.registry.register("churn", artifact_key=v1.artifact_key, artifact_sha256=v1.artifact_sha256,
                              status="approved", actor="t", reason="same bytes, new version", run_id=v1.run_id)
    ws.notify("loopml_after_model_registered", model=v2)
    from loopml import events

    moved = ws.registry.set_alias("churn", "production", 2, expected=1, actor="t", reason="promote")
    events.announce(ws, events.promotion_event(ws, moved), subject=moved)
    assert client.get_registered_model("churn").aliases == {"production": "2"}
    back = ws.registry.rollback("churn", "production", expected=2, actor="oncall", reason="latency")
    events.announce(ws, events.promotion_event(ws, back), subject=back)
    assert client.get_registered_model("churn").aliases == {"production": "1"}
    versions = {mv.version: mv.tags for mv in client.search_model_versions("name = 'churn'")}
    assert {v: t["loopml.version"] for v, t in versions.items()} == {"1": "1", "2": "2"}
    datasets = candidate.dataset_versions
    assert versions["1"]["loopml.dataset.labels"] == datasets["labels"]
    assert versions["1"]["loopml.dataset.features"] == datasets["features"]
    assert versions["1"]["loopml.dataset_version"] == f"{datasets['features']}, {datasets['labels']}"
    assert datasets["features"].startswith("activity@") and datasets["labels"].startswith("labels@")
    signature = mlflow.models.get_model_info("models:/churn@production").signature
    assert {c.name: c.type.name for c in signature.inputs.inputs} == {
        "tenure_months": "long", "monthly_charges": "double", "support_calls": "long",  # as the dataset declares
        "contract": "string", "region": "string"}

    # MLflow's own server for the model: `mlflow models serve` answers like loopml.
    import json
    import os
    import shutil
    import sys
    import urllib.error
    import urllib.request

    from servers import free_port, start, stop, wait_http

    # From another folder, with the trainer's project gone: only the server holds the model.
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    shutil.move(tmp_path / ".loopml", elsewhere / "trainer-home-moved-away")
    port = free_port()
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    proc = start([exe, "models", "serve", "-m", "models:/churn@production", "--env-manager", "local",
                  "--host", "127.0.0.1", "--port", str(port)], elsewhere / "serve.log",
                 env={**os.environ, "MLFLOW_TRACKING_URI": server,  # its uvicorn is beside the python
                      "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")},
                 cwd=elsewhere)

    def invoke(body: bytes, content_type: str) -> tuple[int, object]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def predictions(answer: object) -> list[float]:
        return [a if isinstance(a, float) else a["prediction"] for a in answer["predictions"]]

    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, log=elsewhere / "serve.log")
        as_json = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        status, answered = invoke(as_json, "application/json")
        assert status == 200, answered
        status, from_csv = invoke(rows.to_csv(index=False).encode(), "text/csv")
        assert status == 200, from_csv
        wrong = rows.head(2).astype({"tenure_months": object})
        wrong.loc[:, "tenure_months"] = "many"
        status, refused = invoke(json.dumps({"dataframe_split": json.loads(wrong.to_json(orient="split",
                                                                                         index=False))}).encode(),
                                 "application/json")
    finally:
        stop(proc)
    assert predictions(answered) == pytest.approx(list(expected), abs=1e-6)
    assert predictions(from_csv) == pytest.approx(list(expected), abs=1e-6)
    assert status == 400 and "tenure_months" in json.dumps(refused)  # the signature's types, enforced


def test_credentials_reach_the_server_but_never_the_environment(tmp_path: Path, monkeypatch) -> None:
    """A token for a remote server is sent by MLflow's client as a header; the process environment,
    which a TorchServe JVM or any child process would inherit, never holds it."""
    import http.server
    import json as jsonlib
    import os
    import subprocess
    import sys
    import threading

    from loopml_mlflow import MlflowOptions, _factory, auth

    monkeypatch.setattr(auth, "_authorization", {})  # this process's credentials end with the test
    seen: list[str | None] = []

    class Recording(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # experiments/get-by-name: answer "no such experiment"
            seen.append(self.headers.get("Authorization"))
            body = jsonlib.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "CANARY-mlflow-token-5e1f"
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        tracker = _factory(MlflowOptions(tracking_uri=uri, token=secret),
                           BackendContext("t", tmp_path, tmp_path / ".loopml"))
        assert tracker.client.get_experiment_by_name("loopml-credentials") is None
    finally:
        server.shutdown()
    assert seen and all(header == f"Bearer {secret}" for header in seen)
    assert not any(secret in value for value in os.environ.values())
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ.items()))"],
                           capture_output=True, text=True, check=True)
    assert secret not in child.stdout
