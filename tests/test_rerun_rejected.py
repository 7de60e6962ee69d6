"""A rejected model stays rejected on an unchanged rerun, and the result says which checks failed."""

from __future__ import annotations

import pytest

from loopml.examples import churn

pytestmark = pytest.mark.slow


def test_an_unchanged_rerun_of_a_rejected_model_names_its_failed_checks(tmp_path, prefect_settings) -> None:
    from flows.pipeline import pipeline

    config = churn.init_project(tmp_path / "p", n_customers=500)
    config.write_text(config.read_text().replace("thresholds = { auc = 0.70 }", "thresholds = { auc = 0.99 }"))
    first = pipeline(config=str(config), deploy_model=False)
    assert first.status == "rejected" and "auc" in first.failed_checks and not first.skipped_training
    again = pipeline(config=str(config), deploy_model=False)
    assert again.skipped_training and again.model == first.model and again.status == "rejected"
    assert again.failed_checks == first.failed_checks  # it used to say () for a rejected model
    forced = pipeline(config=str(config), deploy_model=False, retrain="the GPU driver was updated")
    assert not forced.skipped_training and forced.model == first.model  # trained again: the same bytes
    from loopml.context import Workspace

    runs = Workspace.open(config).trackers[0].list_runs("churn")
    assert [r.tags.get("loopml.retrain_reason") for r in runs].count("the GPU driver was updated") == 1


def test_a_gate_change_is_judged_again_without_retraining(tmp_path, monkeypatch) -> None:
    import json
    import subprocess
    import sys

    from loop_steps import loop_once

    from loopml.context import Workspace

    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    config.write_text(config.read_text().replace("thresholds = { auc = 0.70 }", "thresholds = { auc = 0.99 }"))
    monkeypatch.chdir(folder)
    rejected = loop_once(config)
    assert rejected.status == "rejected"
    ws = Workspace.open(config)
    served = sorted((folder / ".loopml" / "features").iterdir())  # the view's source and the online store
    assert served
    stamps = {p: p.stat().st_mtime_ns for p in served}
    cli = [sys.executable, "-m", "loopml.cli", "validate", f"{rejected.name}:{rejected.version}", "--json"]
    still = subprocess.run(cli, capture_output=True, text=True, cwd=folder)
    assert still.returncode == 1 and json.loads(still.stdout)["failed_checks"] == ["auc"]
    config.write_text(config.read_text().replace("thresholds = { auc = 0.99 }", "thresholds = { auc = 0.70 }"))
    passed = subprocess.run(cli, capture_output=True, text=True, cwd=folder)
    assert passed.returncode == 0, passed.stderr
    result = json.loads(passed.stdout)
    assert result["status_before"] == "rejected" and result["status"] == "approved" and result["passed"]
    model = ws.registry.get(rejected.name, rejected.version)
    assert model.status == "approved" and model.artifact_sha256 == rejected.artifact_sha256  # not retrained
    assert "re-judged against today's gates: all gates passed" in ws.registry.history(rejected.name)[-1].reason
    assert {p: p.stat().st_mtime_ns for p in served} == stamps  # the served feature store untouched
