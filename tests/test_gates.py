"""Validation gates decide promotion: worse candidates are rejected with the right reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from loop_steps import train_and_validate

from loopml.context import Workspace
from loopml.examples import churn
from loopml.stages.data import frames, ingest
from loopml.stages.release import register_and_promote
from loopml.stages.training import train
from loopml.testing import HookRecorder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("churn")
    churn.init_project(folder, n_customers=2500, seed=0)
    return folder / "loopml.toml"


def open_ws(config: Path, **pipeline: dict) -> Workspace:
    return Workspace.open(config, profile="ci", overrides={"pipeline": pipeline} if pipeline else None)


@pytest.mark.training
def test_first_model_is_promoted_then_a_worse_one_is_rejected_for_regression(project: Path) -> None:
    recorder = HookRecorder()
    good_ws = open_ws(project)
    good_ws.manager.register(recorder, "recorder")
    try:
        candidate, evaluation, key, baseline = train_and_validate(good_ws)
        assert baseline is None and evaluation.report.passed, evaluation.report.failed_checks
        regression = next(c for c in evaluation.report.checks if c.name == "regression")
        assert "no production model yet" in regression.reason
        v1, event = register_and_promote(good_ws, candidate, evaluation.report, key, baseline)
        assert event is not None and (event.from_version, event.to_version) == (None, 1)
        assert v1.lineage["datasets"]["labels"].startswith("labels@") and v1.git_commit
        assert v1.lineage["validation_report"] == key and good_ws.store.exists(key)
        export = good_ws.store.root / "exports" / "models" / "churn" / "1"  # a readable copy beside the store
        assert {p.name for p in export.iterdir()} >= {"model.pt2", "MLmodel", "model_card.md", "loopml.json"}
        assert (export / "model.pt2").read_bytes() == good_ws.store.get(v1.artifact_key)

        # Same data, weaker features: still above the absolute AUC floor, but worse than production.
        weak_ws = open_ws(project, features={"numeric": ["tenure_months"], "categorical": ["region"]},
                          gates={"thresholds": {"auc": 0.5}})
        weak, evaluation, key, baseline = train_and_validate(weak_ws)
        assert baseline == 1
        assert [c.name for c in evaluation.report.failed_checks] == ["regression"]
        reason = evaluation.report.failed_checks[0].reason
        assert "vs production" in reason and "worse beyond the noise margin" in reason
        v2, event = register_and_promote(weak_ws, weak, evaluation.report, key, baseline)
        assert event is None and v2.status == "rejected"
        assert not (good_ws.store.root / "exports" / "models" / "churn" / "2").exists()  # rejected: no export
        assert good_ws.registry.get("churn", alias="production").version == 1
        assert "regression" in good_ws.registry.history("churn")[-1].reason
    finally:
        good_ws.manager.unregister("recorder")
    assert [c["model"].version for c in recorder.named("loopml_after_model_registered")] == [1, 2]
    assert [c["event"].to_version for c in recorder.named("loopml_after_promotion")] == [1]
    assert recorder.named("loopml_after_model_trained")


@pytest.mark.training
def test_fairness_gate_names_the_slices(project: Path) -> None:
    ws = open_ws(project, gates={"max_fairness_gap": 0.0, "min_slice_rows": 10})
    _, evaluation, _, _ = train_and_validate(ws)
    fairness = next(c for c in evaluation.report.checks if c.name == "fairness")
    assert not fairness.passed and "senior" in fairness.reason and "senior=yes:" in fairness.reason


@pytest.mark.training
def test_unchanged_inputs_skip_training(project: Path) -> None:
    ws = open_ws(project)
    train_and_validate(ws)  # ingests and trains, unless an earlier test already did: either way
    activity, created_a = ingest(ws, "activity")
    labels, created_l = ingest(ws, "labels")
    assert not created_a and not created_l
    train_rows, _ = frames(ws, labels)
    assert train(ws, labels, activity, train_rows).skipped


@pytest.mark.training
def test_gate_report_html_has_plots_and_every_check(project: Path) -> None:
    ws = open_ws(project)
    _, evaluation, key, _ = train_and_validate(ws)
    html = ws.store.get(key).decode()
    assert html.count("<img") >= 3
    for check in evaluation.report.checks:
        assert f"<td>{check.name}</td>" in html
