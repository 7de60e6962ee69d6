"""The W&B tracker plugin in offline mode: real run files, read back with W&B's own schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopml.context import BackendContext
from loopml.records import RunInfo
from loopml.stages.release import register_and_promote
from loopml.testing import TrackerSuite

pytestmark = pytest.mark.slow


def make_tracker(tmp_path: Path, **options):
    from loopml_wandb import WandbOptions, _factory

    return _factory(WandbOptions(mode="offline", **options), BackendContext("proj", tmp_path, tmp_path / "home"))


class TestWandbTracker(TrackerSuite):
    @pytest.fixture
    def tracker(self, tmp_path: Path):
        return make_tracker(tmp_path)


def test_offline_run_directory_holds_metrics_config_and_tags(tmp_path: Path) -> None:
    from loopml_wandb import read_run_file

    tracker = make_tracker(tmp_path, project="churn-team")
    tracker.start_run(RunInfo("run42", "churn", "train-42", {"loopml.dataset.labels": "labels@9f"}))
    tracker.log_params("run42", {"epochs": 3})
    for step, auc in enumerate([0.7, 0.75, 0.8]):
        tracker.log_metrics("run42", {"train_auc": auc}, step=step)
    tracker.set_tags("run42", {"loopml.git_commit": "abc"})
    tracker.end_run("run42")  # kept open for what registration adds ...
    tracker.flush("run42")    # ... and finished here (the loop flushes after registering)
    run_dirs = list((tmp_path / "home" / "wandb").glob("offline-run-*-run42"))
    assert len(run_dirs) == 1
    content = read_run_file(run_dirs[0] / "run-run42.wandb")
    assert content["config"]["epochs"] == "3"
    assert content["config"]["loopml_tags"] == {"loopml.dataset.labels": "labels@9f", "loopml.git_commit": "abc"}
    assert [(p.step, p.value) for p in content["history"]["train_auc"]] == [(0, 0.7), (1, 0.75), (2, 0.8)]
    assert "loopml.dataset.labels=labels@9f" in content["tags"]
    assert content["exit_code"] == 0


def test_the_loop_logs_everything_to_w_and_b_before_the_run_finishes(tmp_path: Path, monkeypatch, caplog) -> None:
    """Train, validate, register and promote with W&B (offline): the model card, the report, the
    gate results and the registry version reach the training run itself, the model is a ``model``
    artifact, and its aliases follow promotions. Read back from W&B's run files with W&B's schema."""
    import logging

    from loop_steps import train_and_validate

    from loopml import events
    from loopml.context import Workspace
    from loopml.examples import churn
    from loopml_wandb import read_run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    churn.init_project(tmp_path, n_customers=600, seed=3)
    config = tmp_path / "loopml.toml"
    config.write_text(config.read_text() + '\n[trackers.wandb]\nmode = "offline"\n')
    ws = Workspace.open(config, profile="ci")
    caplog.set_level(logging.WARNING)
    candidate, evaluation, key, baseline = train_and_validate(ws)
    _v1, _ = register_and_promote(ws, candidate, evaluation.report, key, baseline)
    tracker = next(t for t in ws.trackers if t.name == "wandb")

    content = read_run_file(tracker.run_files(candidate.run_id)[0])  # the training run itself
    assert content["exit_code"] == 0
    kinds = {a["type"]: a for a in content["artifact_records"]}
    assert set(kinds) == {"model", "model-card", "report"}
    assert kinds["model"]["name"] == "churn-model" and kinds["model"]["files"] == ["model.pt2"]
    assert kinds["report"]["name"] == "churn-validation_report.html"  # a collection per model, not per file
    assert kinds["model-card"]["name"] == "churn-model_card.md" and kinds["model-card"]["files"] == ["model_card.md"]
    assert "loopml.registry_version=churn:v1" in content["tags"]
    assert all(len(tag) <= 64 for tag in content["tags"])
    assert "loopml.fingerprint" in content["config"]["loopml_tags"]  # too long for a tag: in the config
    assert content["summary"]["holdout_auc"] == pytest.approx(evaluation.report.metrics["auc"])
    assert any(k.startswith("gate_") for k in content["summary"])
    assert len(content["history"]["train_loss"]) > 1
    assert "is finished" not in caplog.text  # nothing was sent to a finished run

    # The promotion moved the model artifact's alias from the training run itself (resumed), not
    # from a run of its own: W&B holds one run per training.
    folders = sorted((tmp_path / ".loopml" / "wandb").glob("offline-run-*"))
    run_ids = {read_run_file(next(f.glob("run-*.wandb")))["run_id"] for f in folders}
    assert run_ids == {candidate.run_id}, folders
    segments = tracker.run_files(candidate.run_id)
    assert len(segments) == 2  # the training, then the alias move
    record = read_run_file(segments[-1])["artifact_records"][0]
    assert record["type"] == "model" and record["name"] == "churn-model"
    assert {"production", "loopml-v1"} <= set(record["aliases"])
    assert record["digest"] == kinds["model"]["digest"]  # the same artifact version as training's
    moved = ws.registry.set_alias("churn", "canary", 1, expected=None, actor="t", reason="try")
    events.announce(ws, events.promotion_event(ws, moved), subject=moved)
    segments = tracker.run_files(candidate.run_id)
    assert len(segments) == 3 and "canary" in read_run_file(segments[-1])["artifact_records"][0]["aliases"]
    run = tracker.get_run(candidate.run_id)  # the segments read back as one run
    assert run.status == "FINISHED" and "loopml.registry_version" in run.tags and len(run.metrics["train_loss"]) > 1
    assert {r.run_id for r in tracker.list_runs()} == {candidate.run_id}
