"""The whole loop with feature_store = feast and serving = torchserve, as a user would select them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopml.backends.sqlite_registry import SqliteRegistry
from loopml.examples import churn

pytestmark = pytest.mark.slow


def test_demo_on_feast_and_torchserve_promotes_the_retrained_model_without_failed_requests(
        tmp_path: Path, prefect_api: dict[str, str]) -> None:
    project = tmp_path / "project"
    churn.init_project(project, n_customers=2500)
    with open(project / "loopml.toml", "a") as config:
        config.write('\n[feature_store]\nbackend = "feast"\n\n[serving]\nbackend = "torchserve"\n')
    env = {**os.environ, **prefect_api, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "demo", "--folder", str(project),
                             "--customers", "2500", "--requests", "300"],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "serve (torchserve)" in out and "/predictions/churn" in out
    assert "drift in" in out and "churn:v2 approved -> production" in out
    swap = next(line for line in out.splitlines() if "requests during the swap" in line)
    assert ", 0 failed," in swap, swap
    assert (project / ".loopml" / "feast" / "registry.db").is_file()  # Feast really held the features
    assert any((project / ".loopml" / "torchserve" / "model-store").glob("churn-v2-*.mar"))
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    assert registry.aliases("churn") == {"production": 2}  # judged as a canary through the router
    assert "churn:v2 approved -> production after a canary (promote)" in out
    java = subprocess.run(["pgrep", "-f", str(project / ".loopml" / "torchserve")], capture_output=True, text=True)
    assert java.stdout.strip() == ""  # TorchServe stopped with the demo
