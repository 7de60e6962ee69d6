"""`loopml ci` as a CI runner calls it: JUnit with one case per gate check, a job summary, the
reports as files, exit 0 approved / 1 rejected / 2 error, and --no-promote for pull requests."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from loopml.cli import main
from loopml.context import Workspace
from loopml.examples import churn

pytestmark = pytest.mark.slow


def test_a_pull_request_gate_then_a_main_branch_promotion_then_a_failing_gate(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    monkeypatch.chdir(folder)
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code = main(["ci", "--junit", "out/junit.xml", "--no-promote", "--json"])
    said = json.loads(capsys.readouterr().out)
    assert code == 0 and said["passed"] and not said["promoted"]
    ws = Workspace.open(config)
    assert ws.registry.aliases("churn") == {}  # a pull request never moves production
    suite = ET.parse(folder / "out" / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(cases) >= 8
    assert {c.get("name") for c in cases} >= {"auc", "fairness", "latency", "servability"}
    assert "## loopml gate: churn:v1 APPROVED" in summary.read_text() and "| auc | pass |" in summary.read_text()
    assert (folder / said["files"]["report"]).read_text().lower().startswith("<!doctype html")

    assert main(["ci", "--json"]) == 0  # main: the same candidate (reused), now promoted
    said = json.loads(capsys.readouterr().out)
    assert said["promoted"] and ws.registry.aliases("churn") == {"production": 1}

    config.write_text(config.read_text().replace("thresholds = { auc = 0.70 }", "thresholds = { auc = 0.99 }"))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    code = main(["ci", "--junit", "out/junit.xml", "--summary", "out/summary.md", "--no-promote"])
    assert code == 1  # rejected by a gate
    suite = ET.parse(folder / "out" / "junit.xml").getroot().find("testsuite")
    [failed] = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed.get("name") == "auc" and "< minimum 0.99" in failed.find("failure").get("message")
    assert "REJECTED" in (folder / "out" / "summary.md").read_text()
    assert main(["ci", "--profile", "nowhere"]) == 2  # an error is not a verdict
