"""OpenLineage run events from every flow, as Marquez or any OpenLineage consumer reads them: a
START and a COMPLETE (or FAIL) per flow run, parents for stage flows, dataset and model versions as
inputs and outputs; through the file transport and over HTTP to a local OpenLineage endpoint.

The events are checked against a JSON Schema of the OpenLineage 2-0-2 run event written here from
the specification (``RUN_EVENT``): the official ``OpenLineage.json`` is not shipped by any package
this CI can install, and a copy of it is not ours to vendor."""

from __future__ import annotations

import importlib
import json
import pkgutil
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest

from loopml.examples import churn

pytestmark = pytest.mark.slow

UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
URI = "^[a-z][a-z0-9+.-]*://"
FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"type": "string", "pattern": URI},
                        "_schemaURL": {"type": "string", "pattern": URI + r".*#/\$defs/"}}}
FACETS = {"type": "object", "additionalProperties": FACET}
DATASET = {"type": "object", "required": ["namespace", "name"],
           "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                          "facets": FACETS, "inputFacets": FACETS, "outputFacets": FACETS}}
RUN_EVENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "minLength": 1},
        "producer": {"type": "string", "pattern": URI},
        "schemaURL": {"type": "string", "pattern": r"^https://openlineage\.io/spec/2-0-\d+/OpenLineage\.json#/\$defs/"
                                                    "RunEvent$"},
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "pattern": UUID}, "facets": FACETS}},
        "job": {"type": "object", "required": ["namespace", "name"],
                "properties": {"namespace": {"type": "string", "minLength": 1},
                               "name": {"type": "string", "minLength": 1}, "facets": FACETS}},
        "inputs": {"type": "array", "items": DATASET},
        "outputs": {"type": "array", "items": DATASET},
    },
}


def checked(event: dict) -> dict:
    jsonschema.validate(event, RUN_EVENT)
    datetime.fromisoformat(event["eventTime"])
    return event


def test_every_flow_declares_its_lineage() -> None:
    from prefect import Flow

    import flows

    found = {}
    for module in pkgutil.iter_modules(flows.__path__):
        loaded = importlib.import_module(f"flows.{module.name}")
        found |= {obj.name: obj for obj in vars(loaded).values() if isinstance(obj, Flow)}
    assert len(found) >= 15
    silent = [name for name, f in found.items() if name != "loopml-demo" and not getattr(f.fn, "__loopml_lineage__", 0)]
    assert silent == []  # the demo's own flow only calls the pipeline, whose stages speak


def test_a_pipeline_run_tells_openlineage_what_each_flow_read_and_wrote(tmp_path, prefect_settings) -> None:
    from flows.pipeline import pipeline

    config = churn.init_project(tmp_path / "p", n_customers=500)
    config.write_text(config.read_text() + '\n[openlineage]\ntransport = "file"\n')
    result = pipeline(config=str(config), deploy_model=False)
    lines = (tmp_path / "p" / ".loopml" / "openlineage" / "events.jsonl").read_text().splitlines()
    sent = [checked(json.loads(line)) for line in lines]
    runs: dict[str, list[dict]] = {}
    for event in sent:
        runs.setdefault(event["run"]["runId"], []).append(event)
    by_job = {events[0]["job"]["name"]: events for events in runs.values()}
    assert {"loopml-pipeline", "loopml-ingest", "loopml-features", "loopml-train", "loopml-validate",
            "loopml-register"} <= set(by_job)
    for job, events in by_job.items():
        assert [e["eventType"] for e in events] == ["START", "COMPLETE"], job
        assert {e["job"]["namespace"] for e in events} == {"loopml/churn-example"}
    pipeline_run = by_job["loopml-pipeline"][0]["run"]["runId"]
    for job in ("loopml-ingest", "loopml-train", "loopml-register"):
        parent = by_job[job][0]["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == pipeline_run and parent["job"]["name"] == "loopml-pipeline"
    ingested = {d["name"]: d for d in by_job["loopml-ingest"][1]["outputs"]}
    assert {"datasets/labels", "datasets/activity"} <= set(ingested)
    labels = ingested["datasets/labels"]["facets"]
    assert len(labels["version"]["datasetVersion"]) == 64 and {"name": "customer_id", "type": "int"} in \
        [{k: f[k] for k in ("name", "type")} for f in labels["schema"]["fields"]]
    train_inputs = {d["name"] for d in by_job["loopml-train"][1]["inputs"]}
    assert {"datasets/labels", "datasets/activity"} <= train_inputs
    registered = by_job["loopml-register"][1]
    version = result.model.split(":v")[1]
    assert {"name": "models/churn", "version": f"v{version}"} in \
        [{"name": d["name"], "version": d["facets"].get("version", {}).get("datasetVersion")}
         for d in registered["outputs"]]
    assert "models/churn@production" in {d["name"] for d in registered["outputs"]}
    assert {"datasets/labels", "datasets/activity"} <= {d["name"] for d in registered["inputs"]}


class Collector(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                    "event": json.loads(body)})
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_over_http_with_an_api_key_and_a_failed_run_says_fail(tmp_path, prefect_settings, monkeypatch) -> None:
    from flows.ingest import ingest

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = churn.init_project(tmp_path / "p", n_customers=300)
        config.write_text(config.read_text() + f'\n[openlineage]\ntransport = "http"\n'
                          f'url = "http://127.0.0.1:{server.server_address[1]}"\napi_key_env = "OL_KEY"\n')
        monkeypatch.setenv("OL_KEY", "s3cret")
        ingest(config=str(config), datasets=["labels"])
        (tmp_path / "p" / "data" / "labels.csv").write_text("customer_id,churned\nnot-a-number,maybe\n")
        with pytest.raises(Exception, match="labels"):
            ingest(config=str(config), datasets=["labels"])
    finally:
        server.shutdown()
    got = Collector.received
    assert {r["path"] for r in got} == {"/api/v1/lineage"} and {r["auth"] for r in got} == {"Bearer s3cret"}
    events = [checked(r["event"]) for r in got]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "FAIL"]
    failure = events[-1]["run"]["facets"]["errorMessage"]
    assert "labels" in failure["message"] and failure["programmingLanguage"] == "PYTHON"
