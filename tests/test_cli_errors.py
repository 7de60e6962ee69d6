"""User errors from `loopml run` are one clean line; Prefect's traceback only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopml.examples import churn

pytestmark = pytest.mark.slow


def _run(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopml.cli", *args, "run"], cwd=folder, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env, "COLUMNS": "200"})


def test_a_module_path_typo_is_refused_before_any_data_is_read(tmp_path, prefect_api) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=300, example="custom-model")
    config.write_text(config.read_text().replace('module = "churn_models:build"', 'module = "churn_modles:build"'))
    done = _run(folder, prefect_api)
    assert done.returncode == 2
    assert "pipeline.model.options.module: cannot import module 'churn_modles'" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (folder / ".loopml" / "artifacts" / "datasets").exists()  # nothing ingested first


def test_bad_data_inside_the_flow_ends_in_one_line_and_debug_shows_the_traceback(tmp_path, prefect_api) -> None:
    folder = tmp_path / "p"
    churn.init_project(folder, n_customers=300)
    labels = folder / "data" / "labels.csv"
    labels.write_text(labels.read_text().replace(",0,", ",maybe,", 1))
    done = _run(folder, prefect_api)
    both = done.stdout + done.stderr
    assert done.returncode == 2 and "error: " in done.stderr and "churned" in done.stderr
    assert "Traceback" not in both, both[-3000:]
    debug = _run(folder, prefect_api, "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stdout + debug.stderr
