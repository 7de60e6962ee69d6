"""The MLflow tracker plugin, checked with mlflow.MlflowClient against a SQLite tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopml.context import BackendContext
from loopml.records import RunInfo
from loopml.testing import TrackerSuite

pytestmark = pytest.mark.slow


def make_tracker(tmp_path: Path):
    from loopml_mlflow import MlflowOptions, _factory

    return _factory(MlflowOptions(), BackendContext("t", tmp_path, tmp_path / ".loopml"))


class TestMlflowTracker(TrackerSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, tmp_path_factory: pytest.TempPathFactory):
        return make_tracker(tmp_path_factory.mktemp("mlflow"))  # SQLite migrations run once

    @pytest.fixture
    def tracker(self, shared):
        return shared


def test_mlflow_client_finds_the_run_its_metric_history_tags_and_artifacts(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracker = make_tracker(tmp_path)
    run = RunInfo("loopml-run-1", "churn", "train-abc", {"loopml.dataset.labels": "labels@123"})
    tracker.start_run(run)
    tracker.log_params("loopml-run-1", {"epochs": 3, "lr": 0.01})
    for step, loss in enumerate([0.9, 0.6, 0.4]):
        tracker.log_metrics("loopml-run-1", {"train_loss": loss}, step=step)
    tracker.set_tags("loopml-run-1", {"loopml.git_commit": "abc123", "loopml.registry_version": "churn:v4"})
    card = tmp_path / "model_card.md"
    card.write_text("# churn v4")
    tracker.log_artifact("loopml-run-1", card)
    tracker.end_run("loopml-run-1")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / '.loopml' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("churn")
    (found,) = client.search_runs([experiment.experiment_id], "tags.`loopml.run_id` = 'loopml-run-1'")
    assert found.info.status == "FINISHED" and found.info.run_name == "train-abc"
    assert found.data.params == {"epochs": "3", "lr": "0.01"}
    assert found.data.tags["loopml.dataset.labels"] == "labels@123"
    assert found.data.tags["loopml.registry_version"] == "churn:v4"
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.6), (2, 0.4)]
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["model_card.md"]
    assert (tmp_path / ".loopml" / "mlflow-artifacts").is_dir()  # not ./mlruns in the cwd
