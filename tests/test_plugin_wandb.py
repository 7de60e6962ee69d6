"""The W&B tracker plugin in offline mode: real run files, read back with W&B's own schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopml.context import BackendContext
from loopml.records import RunInfo
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
    tracker.end_run("run42")
    run_dirs = list((tmp_path / "home" / "wandb").glob("offline-run-*-run42"))
    assert len(run_dirs) == 1
    content = read_run_file(run_dirs[0] / "run-run42.wandb")
    assert content["config"]["epochs"] == "3"
    assert content["config"]["loopml_tags"] == {"loopml.dataset.labels": "labels@9f", "loopml.git_commit": "abc"}
    assert [(p.step, p.value) for p in content["history"]["train_auc"]] == [(0, 0.7), (1, 0.75), (2, 0.8)]
    assert "loopml.dataset.labels=labels@9f" in content["tags"]
    assert content["exit_code"] == 0
