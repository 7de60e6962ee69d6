"""The flows as deployments on a real local Prefect server and process worker, with the event
trigger that closes the loop (what Prefect Cloud runs, minus the cloud)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port, start, stop, wait_http

from loopml.backends.sqlite_registry import SqliteRegistry

pytestmark = [pytest.mark.slow, pytest.mark.in_order]  # pipeline, then drift and retrain, then rollback
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
PROJECT = "churn-example"  # the `project` of the example's loopml.toml; scopes the triggers


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A real Prometheus scraping a Pushgateway (what the flows' `prometheus` monitor pushes) and
    every serve run (targets written to a file_sd file as they start), the whole module long."""
    if not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")):
        pytest.skip("apt-get install prometheus prometheus-pushgateway")
    tmp = tmp_path_factory.mktemp("prometheus")
    push, prom = free_port(), free_port()
    targets = tmp / "serve-targets.json"
    targets.write_text("[]")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: pushgateway\n    honor_labels: true\n    static_configs: [{{targets: ['127.0.0.1:{push}']}}]\n"
        f"  - job_name: loopml-serve\n    file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n")
    procs = [start(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{push}",  # own persistence file:
                    f"--persistence.file={tmp / 'push.data'}"], tmp / "push.log"),  # Debian's default is shared
             start(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom}"], tmp / "prom.log")]
    try:
        wait_http(f"http://127.0.0.1:{push}/-/ready", log=tmp / "push.log")
        wait_http(f"http://127.0.0.1:{prom}/-/ready", log=tmp / "prom.log")
        yield {"pushgateway": f"http://127.0.0.1:{push}", "url": f"http://127.0.0.1:{prom}", "targets": targets}
    finally:
        for proc in procs:
            stop(proc)


def promql(prometheus: dict[str, object], expr: str) -> list[dict]:
    import json
    import urllib.parse
    import urllib.request

    url = f"{prometheus['url']}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def wait_promql(prometheus: dict[str, object], expr: str, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (result := promql(prometheus, expr)):
        assert time.monotonic() < deadline, f"Prometheus never had {expr}"
        time.sleep(1)
    return result


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory, prometheus) -> Iterator[tuple[dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("deploy")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "LOOPML_REPO": str(REPO), "LOOPML_PROJECT": PROJECT}
    server = start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   tmp / "server.log", env, REPO)
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=90, log=tmp / "server.log")
        subprocess.run([*PREFECT, "work-pool", "create", "loopml-process", "--type", "process"],
                       env=env, check=True, capture_output=True, timeout=60)
        subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file",
                        "deployments/prefect.yaml"], env=env, cwd=REPO, check=True, capture_output=True,
                       timeout=120)
        project = tmp / "project"
        subprocess.run([sys.executable, "-m", "loopml.cli", "init", str(project), "--customers", "2000"],
                       check=True, capture_output=True, timeout=120)
        with open(project / "loopml.toml", "a") as toml:  # a profile whose canary fails on any change
            toml.write(f"\n[monitors.prometheus]\npushgateway = '{prometheus['pushgateway']}'\n")
            toml.write("\n[profiles.strict.pipeline.rollout]\nmax_output_shift = 0.0\n"
                       "[profiles.strict.pipeline.training]\nseed = 5\n"
                       "[profiles.strict.pipeline.model.options]\nepochs = 10\n")
        worker_env = {**env, "LOOPML_CONFIG": str(project / "loopml.toml"), "LOOPML_PROFILE": "ci"}
        worker = start([*PREFECT, "worker", "start", "--pool", "loopml-process"], tmp / "worker.log",
                       worker_env, REPO)
        yield env, project
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def flow_runs(env: dict[str, str], deployment: str) -> list[str]:
    """States of the flow runs of one deployment, read through the Prefect client."""
    script = f"""
import asyncio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[{deployment!r}])))
        print(",".join(r.state.type.value for r in runs if r.state))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return [s for s in out.stdout.strip().split(",") if s]


def prefect_view(env: dict[str, str]) -> dict:
    """What the Prefect UI shows: flow run names and tags, and the latest artifact of each key."""
    script = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs()
        artifacts = await client.read_latest_artifacts()
        print(json.dumps({"runs": {r.name: sorted(r.tags) for r in runs},
                          "artifacts": {a.key: {"type": a.type, "data": a.data} for a in artifacts}}, default=str))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_pipeline_deployment_runs_on_the_worker(prefect_stack) -> None:
    env, project = prefect_stack
    result = subprocess.run([*PREFECT, "deployment", "run", "loopml-pipeline/pipeline", "--watch",
                             "--watch-timeout", "400"], env=env, capture_output=True, text=True, timeout=450)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Completed" in result.stdout
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    assert registry.aliases("churn") == {"production": 1}
    # In the Prefect UI: runs named by what they did, tagged by project and model; a link to the
    # report; the training's progress.
    view = prefect_view(env)
    assert {"loopml", "project:churn-example", "model:churn", "version:v1"} <= set(view["runs"]["pipeline-churn-v1"])
    assert any(name.startswith("train-churn-") for name in view["runs"])
    assert "register-churn-v1" in view["runs"]
    [features] = [name for name in view["runs"] if name.startswith("features-activity-")]  # named, tagged too
    assert "project:churn-example" in view["runs"][features]
    validation = view["artifacts"]["churn-validation"]["data"]  # the gate table, readable in the UI
    assert "| auc |" in validation and "| feature | permutation importance |" in validation
    assert "file://" not in validation and "loopml reports show reports/churn/" in validation
    assert "churn-validation-report" not in view["artifacts"]  # no link a local store cannot give
    assert view["artifacts"]["churn-training"]["type"] == "progress"
    assert float(view["artifacts"]["churn-training"]["data"]) == 100.0
    # The store's gc deployment runs on the worker too, and takes nothing a key refers to.
    killed = project / ".loopml" / "artifacts" / "tmp" / ".part-killed-writer"
    killed.write_bytes(b"partial")
    result = subprocess.run([*PREFECT, "deployment", "run", "loopml-store-gc/store-gc", "--watch",
                             "--watch-timeout", "300"], env=env, capture_output=True, text=True, timeout=350)
    assert result.returncode == 0 and "Completed" in result.stdout, result.stdout[-2000:]
    assert not killed.exists()
    model = registry.get("churn", alias="production")
    from loopml.backends.local_store import LocalArtifactStore
    assert LocalArtifactStore(project / ".loopml" / "artifacts").get(model.artifact_key)


@pytest.fixture(scope="module")
def served(prefect_stack, prometheus) -> Iterator[str]:
    """The serve deployment, running on the worker; yields its URL; cancelled afterwards."""
    import json

    env, _ = prefect_stack
    port = free_port()
    prometheus["targets"].write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
    out = subprocess.run([*PREFECT, "deployment", "run", "loopml-serve/serve", "--param", f"port={port}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v2/health/ready", timeout=240)
        yield url
    finally:
        subprocess.run([*PREFECT, "flow-run", "cancel", run_id], env=env, capture_output=True, timeout=60)


def emit(env: dict[str, str], event: str, project: str) -> None:
    code = ("from prefect.events import emit_event\n"
            f"emit_event(event={event!r}, resource={{'prefect.resource.id': 'loopml.model.{project}.churn', "
            f"'loopml.project': {project!r}, 'loopml.model': 'churn'}}, payload={{'features': ['monthly_charges']}})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def wait_for_runs(env: dict[str, str], deployment: str, n: int, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        states = flow_runs(env, deployment)
        if states.count("COMPLETED") + states.count("FAILED") + states.count("CRASHED") >= n:
            return states
        time.sleep(2)
    return states


def test_drift_retrains_this_project_only_and_the_canary_is_promoted_on_served_traffic(prefect_stack, served,
                                                                                     prometheus) -> None:
    from loopml.examples import churn
    from loopml.serving.builtin import post_json
    from loopml.traffic import TrafficGenerator

    env, project = prefect_stack
    row = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
    assert post_json(served + "/predict", {"rows": [row]})[1]["version"] == 1
    fresh = churn.generate(2000, seed=22, drift=1.0, id_offset=1_000_000)
    churn.write(fresh, project / "data")
    assert flow_runs(env, "retrain-on-drift") == []
    emit(env, "loopml.drift.detected", "another-project")  # shares the work pool: must not retrain ours
    traffic = TrafficGenerator(served + "/predict", churn.request_rows(fresh, tuple(row))).start()
    try:
        deadline = time.monotonic() + 120
        while traffic.sent < 500:  # drifted requests reach the prediction log of the serve run
            assert time.monotonic() < deadline, traffic.errors[:3]
            time.sleep(0.5)
        monitor = subprocess.run([*PREFECT, "deployment", "run", "loopml-monitor/monitor", "--watch",
                                  "--watch-timeout", "300"], env=env, capture_output=True, text=True, timeout=360)
        assert monitor.returncode == 0, monitor.stdout[-2000:] + monitor.stderr[-2000:]
        states = wait_for_runs(env, "retrain-on-drift", 1)  # the monitor's drift event triggered it
    finally:
        traffic.stop()
    assert states == ["COMPLETED"], states  # one run: the other project's event started nothing
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    assert registry.aliases("churn") == {"production": 2}  # the passed canary's alias went with the move
    actions = [(e.action, e.alias, e.to_version, e.actor) for e in registry.history("churn") if e.action != "register"]
    assert actions[-3:] == [("promote", "canary", 2, actions[-3][3]), ("promote", "production", 2, "loopml-canary"),
                            ("clear", "canary", None, "loopml-canary")]
    assert traffic.failed == 0 and traffic.versions[2] > 0  # the canary answered real requests, none failed
    deadline = time.monotonic() + 60  # the serve run follows the promotion within its poll interval
    while post_json(served + "/predict", {"rows": [row]})[1].get("version") != 2:
        assert time.monotonic() < deadline, "the served model did not follow the promotion"
        time.sleep(0.5)
    # Prometheus scraped it all: both versions' traffic from the serve run, and what the flows pushed.
    rows = wait_promql(prometheus, 'loopml_prediction_rows_total{model="churn"}')
    by_version = {r["metric"]["version"] for r in rows}
    assert {"1", "2"} <= by_version
    production = wait_promql(prometheus, f'loopml_alias_version{{project="{PROJECT}",alias="production"}} == 2')
    assert production[0]["metric"]["model"] == "churn"
    assert wait_promql(prometheus, f'loopml_canary_version{{project="{PROJECT}"}} == 2')
    assert wait_promql(prometheus, f'loopml_gate_passed{{project="{PROJECT}",check="regression"}} == 1')


def test_a_failing_canary_is_rolled_back_and_the_automation_calls_the_webhook(prefect_stack, served) -> None:
    import json
    import queue
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from loopml.examples import churn
    from loopml.serving.builtin import post_json
    from loopml.traffic import TrafficGenerator

    env, project = prefect_stack
    received: queue.Queue[dict] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    setup = subprocess.run([sys.executable, "-m", "loopml.prefect_setup", "--webhook",
                            f"http://127.0.0.1:{hook.server_port}/hook", "--project", PROJECT,
                            "--allow-private-urls"], env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]  # what the README tells users to run
    fresh = churn.generate(2000, seed=23, drift=1.0, id_offset=2_000_000)
    row = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
    traffic = TrafficGenerator(served + "/predict", churn.request_rows(fresh, tuple(row))).start()
    try:
        out = subprocess.run([*PREFECT, "deployment", "run", "loopml-pipeline/retrain-on-drift", "--param",
                              "profile=strict", "--watch", "--watch-timeout", "600"], env=env, capture_output=True,
                             text=True, timeout=700)
    finally:
        traffic.stop()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    v3 = registry.get("churn", 3)
    assert v3.status == "rejected" and registry.aliases("churn") == {"production": 2}  # no canary left
    last = registry.history("churn")[-2]
    assert (last.action, last.alias, last.from_version, last.actor) == ("clear", "canary", 3, "loopml-canary")
    assert "canary-output-shift" in last.reason
    assert traffic.failed == 0 and post_json(served + "/predict", {"rows": [row]})[1]["version"] == 2
    try:
        note = received.get(timeout=120)
    finally:
        hook.shutdown()
    assert "rolled-back" in note["subject"] and "canary failed" in note["body"], note
