"""The registry's database goes down under a running system (a real PostgreSQL, stopped and started):
commands say so in one line and exit 2, running servers keep answering and back off, a replica that
starts during the outage serves what its machine served last (or waits, then says why it gave up),
and everything follows the registry again once it is back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from churn_models import GOOD, register_versions, wait_for
from servers import POSTGRES_CONTROL, postgres_server, start, stop

from loopml.context import Workspace
from loopml.examples import churn
from loopml.serving.builtin import post_json
from loopml.traffic import TrafficGenerator

pytestmark = pytest.mark.slow


def project(folder: Path, database: str) -> Path:
    config = churn.init_project(folder, n_customers=200, seed=1)
    config.write_text(config.read_text() + f'\n[registry]\nbackend = "postgres"\n[registry.options]\n'
                      f'url = "{database}"\n\n[serving]\nbackend = "builtin"\n[serving.options]\n'
                      'registry_wait_seconds = 3\n')
    return config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A project on PostgreSQL with churn v1 in production and v2 approved (artifacts in its store)."""
    root = tmp_path_factory.mktemp("outage")
    with postgres_server() as database:
        config = project(root / "replica-a", database)
        register_versions(Workspace.open(config), (1, 2), prefix="outage")
        yield config, database


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopml.cli", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=300)


def serve(config: Path, log: Path) -> subprocess.Popen:
    return start([sys.executable, "-m", "loopml.cli", "serve", "churn@production", "--port", "0",
                  "--poll-seconds", "0.2", "--config", str(config)], log, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def url_of(log: Path, proc: subprocess.Popen) -> str:
    wait_for(lambda: "serving churn@production on" in log.read_text() or proc.poll() is not None, 180, "start")
    assert proc.poll() is None, log.read_text()[-3000:]
    return re.search(r"on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]


def test_a_registry_outage_is_survived_and_said_in_one_line(cluster, tmp_path: Path) -> None:
    config, database = cluster
    control = POSTGRES_CONTROL[database]
    running_log = tmp_path / "running.log"
    running = serve(config, running_log)
    url = url_of(running_log, running)
    clients = [TrafficGenerator(url + "/predict", [GOOD]).start() for _ in range(4)]
    try:
        wait_for(lambda: all(c.versions[1] >= 5 for c in clients), 60, "traffic on v1")
        control("stop")
        try:
            # every command: one line, exit 2, the database named without a password
            for args in (["models", "promote", "churn:2", "--expected", "1"], ["models", "list", "churn"]):
                result = cli(config, *args)
                assert result.returncode == 2, (args, result.stdout, result.stderr[-2000:])
                assert "registry database is unreachable" in result.stderr and "Traceback" not in result.stderr
                assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # one (wrapped) line
            # a replica starting now on this machine serves what it served last
            again_log = tmp_path / "again.log"
            again = serve(config, again_log)
            again_url = url_of(again_log, again)
            assert post_json(again_url + "/predict", {"rows": [GOOD]})[0] == 200
            assert "serving churn as this machine last did" in again_log.read_text()
            # a replica on a machine that never served it retries for registry_wait_seconds, then says why
            fresh = cli(project(tmp_path / "fresh", database), "serve", "churn@production", "--port", "0")
            assert fresh.returncode == 2 and "no last known good version" in fresh.stderr, fresh.stderr[-2000:]
            assert "Traceback" not in fresh.stderr
            sent = sum(c.sent for c in clients)
            wait_for(lambda: sum(c.sent for c in clients) > sent + 50, 60, "answers during the outage")
        finally:
            control("start")
        # back: both servers follow a promotion
        ws = Workspace.open(config)
        ws.registry.set_alias("churn", "production", 2, expected=1, actor="test", reason="after the outage")
        wait_for(lambda: all(c.versions[2] >= 5 for c in clients), 120, "v2 served after the outage")
        wait_for(lambda: post_json(again_url + "/predict", {"rows": [GOOD]})[1].get("version") == 2, 120,
                 "the replica started during the outage follows")
        ws.registry.rollback("churn", "production", expected=2, actor="test", reason="restore")
    finally:
        for c in clients:
            c.stop()
        stop(running)
        if "again" in locals():
            stop(again)
    assert sum(c.failed for c in clients) == 0, [c.errors[:2] for c in clients]
    warnings = running_log.read_text().count("could not follow the registry")
    assert 1 <= warnings <= 3, running_log.read_text()[-3000:]  # backs off: not one warning per 0.2 s poll
    print(f"outage: {sum(c.sent for c in clients)} requests, 0 failed, {warnings} warning(s) from the running server")
