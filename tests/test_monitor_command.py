"""`loopml monitor`: the drift check as a command, with the same conventions as the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from loop_steps import loop_once

from loopml.examples import churn

pytestmark = pytest.mark.slow


def _monitor(folder, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopml.cli", "monitor", *args], cwd=folder, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env, "COLUMNS": "200"})


def test_monitor_says_what_is_missing_then_checks_the_window(tmp_path, prefect_api, monkeypatch) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=400)
    early = _monitor(folder, prefect_api)
    assert early.returncode == 2 and "no production model of churn to monitor yet" in early.stderr
    assert "Traceback" not in early.stdout + early.stderr
    monkeypatch.chdir(folder)
    assert loop_once(config).status == "approved"
    done = _monitor(folder, prefect_api, "--json", "--fail-on-drift")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["drift"] is False and "0 current rows" in result["reason"] and result["report"].endswith(".html")
