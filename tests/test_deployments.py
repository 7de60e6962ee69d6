"""The flows as deployments on a real local Prefect server and process worker, with the event
trigger that closes the loop (what Prefect Cloud runs, minus the cloud)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port, start, stop, wait_http

from loopml.backends.sqlite_registry import SqliteRegistry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    tmp = tmp_path_factory.mktemp("deploy")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "LOOPML_REPO": str(REPO)}
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


def test_pipeline_deployment_runs_on_the_worker(prefect_stack) -> None:
    env, project = prefect_stack
    result = subprocess.run([*PREFECT, "deployment", "run", "loopml-pipeline/pipeline", "--watch",
                             "--watch-timeout", "400"], env=env, capture_output=True, text=True, timeout=450)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Completed" in result.stdout
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    assert registry.aliases("churn") == {"production": 1}


@pytest.fixture(scope="module")
def served(prefect_stack) -> Iterator[str]:
    """The serve deployment, running on the worker; yields its URL; cancelled afterwards."""
    env, _ = prefect_stack
    port = free_port()
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


def test_drift_event_triggers_the_retrain_and_the_served_model_follows(prefect_stack, served) -> None:
    from loopml.examples import churn
    from loopml.serving import post_json

    env, project = prefect_stack
    row = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
    assert post_json(served + "/predict", {"rows": [row]})[1]["version"] == 1
    churn.write(churn.generate(2000, seed=22, drift=1.0, id_offset=1_000_000), project / "data")  # fresh data
    assert flow_runs(env, "retrain-on-drift") == []
    emit = ("from prefect.events import emit_event\n"
            "emit_event(event='loopml.drift.detected', resource={'prefect.resource.id': 'loopml.model.churn'},"
            " payload={'features': ['monthly_charges']})")
    subprocess.run([sys.executable, "-c", emit], env=env, check=True, timeout=60)
    deadline = time.monotonic() + 240
    states: list[str] = []
    while time.monotonic() < deadline:
        states = flow_runs(env, "retrain-on-drift")
        if "COMPLETED" in states:
            break
        time.sleep(2)
    assert states == ["COMPLETED"]
    assert SqliteRegistry(project / ".loopml" / "registry.db").aliases("churn") == {"production": 2}
    deadline = time.monotonic() + 60  # the serve run follows the promotion within its poll interval
    while post_json(served + "/predict", {"rows": [row]})[1].get("version") != 2:
        assert time.monotonic() < deadline, "the served model did not follow the promotion"
        time.sleep(0.5)
