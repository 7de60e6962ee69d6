"""An in-house plugin, pip-installed as its own package, is found and used through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "examples" / "plugin-template"

USE_IT = """
from loopml.context import Workspace
from loopml.records import RunInfo
from loopml.tracking import TrackingSession
ws = Workspace.open()
assert [t.name for t in ws.trackers] == ["local", "jsonl"], ws.trackers
session = TrackingSession(ws.trackers, RunInfo("run-1", "exp", "demo"))
session.log_params({"lr": 0.1})
session.log_metrics({"loss": 0.5}, step=0)
session.end()
print(ws.trackers[1].get_run("run-1").params["lr"])
"""

pytestmark = pytest.mark.subprocess  # the module's fixture pip-installs the template plugin


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(TEMPLATE)], check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def _loopml(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopml.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_installed_plugin_is_listed_with_its_distribution(installed, tmp_path) -> None:
    result = _loopml(["plugins", "list", "--json"], installed, tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["jsonl"]["distribution"] == "loopml-jsonl-tracker"
    assert plugins["jsonl"]["backends"] == ["tracker:jsonl"]
    assert "tracker:local" in plugins["loopml"]["backends"]


def test_disabling_the_plugin_hides_it(installed, tmp_path) -> None:
    env = {**installed, "LOOPML_DISABLE_PLUGINS": "jsonl"}
    plugins = json.loads(_loopml(["plugins", "list", "--json"], env, tmp_path).stdout)["plugins"]
    assert "jsonl" not in {p["name"] for p in plugins}


def test_the_plugin_backend_is_selected_by_config_and_records_runs(installed, tmp_path) -> None:
    (tmp_path / "loopml.toml").write_text('[trackers.local]\n[trackers.jsonl]\npath = "audit/runs.jsonl"\n')
    result = subprocess.run([sys.executable, "-c", USE_IT], env=installed, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1"
    lines = (tmp_path / "audit" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line)["verb"] for line in lines] == ["start_run", "log_params", "log_metrics", "end_run"]
    check = _loopml(["plugins", "check"], installed, tmp_path)
    assert check.returncode == 0, check.stderr


FREEZE = """
from loopml.context import Workspace
from loopml.records import GateReport
ws = Workspace.open()
print(ws.manager.first_veto(context=ws.hook_context, model_name="m", candidate="c",
                            report=GateReport("m", "c", None, ())))
"""


def test_the_plugin_takes_its_settings_from_its_own_table(installed, tmp_path) -> None:
    (tmp_path / "loopml.toml").write_text('[plugins.jsonl]\nfreeze_reason = "change freeze"\n')
    result = subprocess.run([sys.executable, "-c", FREEZE], env=installed, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "jsonl: change freeze"
    (tmp_path / "loopml.toml").write_text('[plugins.jsonl]\nfreeze_reson = "x"\n')
    check = _loopml(["config"], installed, tmp_path)
    assert check.returncode == 2 and "plugins.jsonl.freeze_reson: unknown option (did you mean 'freeze_reason'?)" \
        in check.stderr, check.stderr


def test_the_template_passes_the_tracker_conformance_suite(installed) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(TEMPLATE / "tests")], env=installed, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
