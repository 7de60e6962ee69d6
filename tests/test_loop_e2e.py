"""The whole loop, as the README's first command runs it, on a real (temporary) Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopml.backends.sqlite_registry import SqliteRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory,
         prefect_api: dict[str, str]) -> tuple[Path, subprocess.CompletedProcess, dict]:
    folder = tmp_path_factory.mktemp("demo") / "project"
    env = {**os.environ, **prefect_api, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "demo", "--folder", str(folder),
                             "--customers", "3000", "--requests", "300"],
                            capture_output=True, text=True, timeout=900, env=env)
    return folder, result, env


def test_demo_runs_the_whole_loop_to_its_summary(demo) -> None:
    _folder, result, _ = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "churn:v1 approved -> production" in out
    assert "no feature drifted" in out  # same-distribution traffic: quiet
    assert "drift in" in out and "monthly_charges" in out  # injected shift: detected
    assert "churn:v2 approved -> production" in out  # retrained on fresh data, beat production
    swap = next(line for line in out.splitlines() if "requests during the swap" in line)
    assert ", 0 failed," in swap, swap  # no request dropped while v2 replaced v1
    reports = [line.split("report: ", 1)[1].strip() for line in out.splitlines() if "report: " in line]
    assert len(reports) == 5 and all(Path(r).is_file() for r in reports)  # validation x2, drift x2, canary
    assert "churn:v2 approved -> production after a canary (promote)" in out


def test_the_registry_holds_lineage_and_history(demo) -> None:
    folder, _, _ = demo
    registry = SqliteRegistry(folder / ".loopml" / "registry.db")
    v1, v2 = registry.list_versions("churn")
    assert registry.aliases("churn") == {"production": 2}  # the passed canary's alias went with the move
    assert v1.dataset_version != v2.dataset_version  # retrained on a new data version
    for model in (v1, v2):
        assert model.lineage["datasets"]["features"].startswith("activity@")
        assert model.environment["torch"] and model.run_id and model.git_commit
    actions = [(e.action, e.alias, e.from_version, e.to_version) for e in registry.history("churn")
               if e.action != "register"]
    # v2 served as a canary next to v1 before production moved; the canary's verdict moved it, and
    # cleared the canary alias in the same transaction.
    assert actions == [("promote", "production", None, 1), ("promote", "canary", None, 2),
                       ("promote", "production", 1, 2), ("clear", "canary", 2, None)]
    assert registry.history("churn")[-1].actor == "loopml-canary"


def test_monitors_saw_drift_and_promotions(demo) -> None:
    folder, _, _ = demo
    events = [json.loads(line) for line in
              (folder / ".loopml" / "monitoring" / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    promotions = [(e["alias"], e["to_version"]) for e in events if e["event"] == "promotion"]
    assert promotions == [("production", 1), ("canary", 2), ("production", 2), ("canary", None)]
    assert kinds.count("drift") == 1
    observed = [e for e in events if e["event"] == "observe"]  # both monitor runs saw the traffic
    assert [(e["version"], e["rows"]) for e in observed] == [(1, 300), (1, 300)]


def test_rerun_with_unchanged_data_skips_training(demo) -> None:
    folder, _, env = demo
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "run", "--no-deploy",
                             "--config", str(folder / "loopml.toml")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training skipped: inputs unchanged" in result.stdout + result.stderr
    assert len(SqliteRegistry(folder / ".loopml" / "registry.db").list_versions("churn")) == 2


def test_a_command_line_run_ends_at_the_registry_and_says_how_to_serve(demo) -> None:
    """With the built-in backend, `loopml run` starts no server in a process about to exit (it
    printed a URL that died with the command); it says how to serve instead."""
    folder, _, env = demo
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "run", "--config", str(folder / "loopml.toml")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "serve it: loopml serve churn@production" in said
    assert "serving_url=None" in said and "'loopml-deploy'" not in said
