"""`loopml reproduce`: a registered model rebuilt from its record alone, for every example project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loop_steps import loop_once

from loopml.context import Workspace
from loopml.examples import churn
from loopml.reproduction import ReproductionError, reproduce

pytestmark = [pytest.mark.training, pytest.mark.slow]
GIT_ENV = {"GIT_AUTHOR_NAME": "Data Scientist", "GIT_AUTHOR_EMAIL": "ds@example.com",
           "GIT_COMMITTER_NAME": "Data Scientist", "GIT_COMMITTER_EMAIL": "ds@example.com"}


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def commit_all(folder: Path, message: str) -> str:
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", message)
    return git(folder, "rev-parse", "HEAD")


def new_project(folder: Path, example: str) -> Path:
    churn.init_project(folder, n_customers=500, example=example)
    git(folder, "init", "-q")
    commit_all(folder, f"the {example} example")
    return folder / "loopml.toml"


@pytest.mark.parametrize("example", churn.EXAMPLES)
def test_every_example_is_rebuilt_bit_for_bit_from_its_record(tmp_path, example, monkeypatch) -> None:
    config = new_project(tmp_path / example, example)
    monkeypatch.chdir(config.parent)  # the custom model's module is imported from the project
    monkeypatch.syspath_prepend(str(config.parent))
    for name in ("churn_models", "churn_gates"):  # tests/ has a helper of the same name: import the project's
        monkeypatch.delitem(sys.modules, name, raising=False)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # trained with one thread; the rebuild's process would default to every core
    try:
        model = loop_once(config)
    finally:
        torch.set_num_threads(threads)
    assert model.environment["torch_threads"] == "1"
    trained_at = git(config.parent, "rev-parse", "HEAD")
    assert model.git_commit == trained_at and model.lineage["git_dirty"] is False
    # the project moves on: a later commit changes the trainer; the record still names the old one
    text = config.read_text()
    config.write_text(text.replace("seed = 7", "seed = 8") if "seed = 7" in text else text + "\n# later\n")
    commit_all(config.parent, "later work")
    verdict = reproduce(Workspace.open(config), model.name, model.version)
    assert verdict.outcome == "identical", verdict.describe()
    assert verdict.rebuilt_sha256 == model.artifact_sha256 and verdict.max_prediction_difference == 0.0
    assert trained_at[:12] in verdict.code and verdict.differences == () and verdict.holdout_rows > 0
    assert git(config.parent, "worktree", "list").count("\n") == 0  # the temporary worktree is gone


def test_a_model_trained_from_uncommitted_changes_is_reported_as_different(tmp_path, monkeypatch) -> None:
    config = new_project(tmp_path / "p", "churn")
    monkeypatch.chdir(config.parent)
    config.write_text(config.read_text().replace("epochs = 25", "epochs = 3"))  # never committed
    model = loop_once(config)
    assert model.lineage["git_dirty"] is True
    verdict = reproduce(Workspace.open(config), model.name, model.version)
    assert verdict.outcome == "different" and verdict.max_prediction_difference > 1e-6
    said = verdict.describe()
    assert "uncommitted changes" in said and "parameter epochs: 3 then, 25 now" in said, said


def test_a_commit_missing_from_the_repository_is_named_with_the_fix(tmp_path, monkeypatch) -> None:
    config = new_project(tmp_path / "p", "churn")
    monkeypatch.chdir(config.parent)
    model = loop_once(config)
    folder = config.parent
    branch = git(folder, "rev-parse", "--abbrev-ref", "HEAD")  # history rewritten: the commit is gone
    git(folder, "checkout", "-q", "--orphan", "rewritten")
    commit_all(folder, "rewritten history")
    git(folder, "branch", "-q", "-D", branch)
    git(folder, "reflog", "expire", "--expire=now", "--all")
    git(folder, "gc", "-q", "--prune=now")
    with pytest.raises(ReproductionError, match=f"commit {model.git_commit} is not in the repository.*git fetch"):
        reproduce(Workspace.open(config), model.name, model.version)


def test_the_command_prints_the_verdict_as_json_and_exits_zero(tmp_path, monkeypatch) -> None:
    from loopml.cli import main

    config = new_project(tmp_path / "p", "churn")
    monkeypatch.chdir(config.parent)
    model = loop_once(config)
    done = subprocess.run([sys.executable, "-m", "loopml.cli", "reproduce", f"{model.name}:{model.version}",
                           "--json"], cwd=config.parent, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["outcome"] == "identical" and verdict["recorded_sha256"] == model.artifact_sha256
    assert main(["reproduce", model.name, "--config", str(config)]) == 2  # no version: one clear line
