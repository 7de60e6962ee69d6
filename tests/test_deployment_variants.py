"""The docker and kubernetes variants of the deployments, accepted by a real Prefect server.

Their deployments share names with deployments/prefect.yaml (a team uses one variant), so they get
a Prefect server of their own here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port, start, stop, wait_http

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("variants")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "LOOPML_REPO": str(REPO),
           "LOOPML_PROJECT": "variants-only"}
    server = start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp / "server.log",
                   env, REPO)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=120, log=tmp / "server.log")
        yield env
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_the_docker_and_kubernetes_variants_deploy_with_their_pools_job_variables(prefect_server, kind) -> None:
    """The same flows for container work pools: Prefect accepts the files and renders the job
    variables (no Docker engine or cluster here, so no worker runs them)."""
    env = {**prefect_server, "LOOPML_IMAGE": "ghcr.io/example/loopml:0.1.0", "LOOPML_PROJECT_DIR": "/srv/churn",
           "LOOPML_NAMESPACE": "ml"}
    created = subprocess.run([*PREFECT, "work-pool", "create", f"loopml-{kind}", "--type", kind],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file",
                               f"deployments/prefect-{kind}.yaml"], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    script = f"""
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        found = await client.read_deployments()
        print(json.dumps({{d.name: {{"pool": d.work_pool_name, "vars": d.job_variables, "entry": d.entrypoint}}
                          for d in found if d.work_pool_name == "loopml-{kind}"}}))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    deployments = json.loads(out.stdout)
    assert set(deployments) == {"pipeline", "retrain-on-drift", "monitor", "canary", "performance", "store-gc"}
    for deployment in deployments.values():
        assert deployment["vars"]["image"] == "ghcr.io/example/loopml:0.1.0"
        assert deployment["vars"]["env"]["LOOPML_CONFIG"] == "/project/loopml.toml"
        assert (REPO / deployment["entry"].split(":")[0]).is_file()
    if kind == "docker":
        assert deployments["pipeline"]["vars"]["volumes"] == ["/srv/churn:/project"]
    else:
        assert deployments["pipeline"]["vars"]["namespace"] == "ml"
