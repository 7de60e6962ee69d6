"""Every example project runs the whole loop: train, gate, promote, serve, drift, retrain, swap.

The churn example is covered in depth by test_loop_e2e; here the regression, multiclass and
custom-model examples (a team's own residual net and gate plugin) each run `loopml demo`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopml.backends.sqlite_registry import SqliteRegistry

pytestmark = pytest.mark.slow

CASES = {  # model name, gates that must have passed, the task's metrics on the holdout
    "regression": ("spend", ("rmse", "r2", "fairness"), ("rmse", "mae", "r2")),
    "multiclass": ("plan", ("macro_auc", "fairness"), ("macro_auc", "accuracy", "log_loss")),
    "custom-model": ("churn", ("auc", "min-slice-metric"), ("auc", "log_loss", "accuracy")),
}


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_runs_the_whole_loop(example: str, tmp_path: Path, prefect_api: dict[str, str]) -> None:
    model, checks, metrics = CASES[example]
    folder = tmp_path / "project"
    env = {**os.environ, **prefect_api, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "demo", "--folder", str(folder), "--example",
                             example, "--customers", "3000", "--requests", "300"],
                            capture_output=True, text=True, timeout=900, env=env)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert f"{model}:v1 approved -> production" in out
    assert f"train {model} " in result.stderr and "━" in result.stderr  # the CLI's progress bar
    assert "no feature drifted" in out and "drift in" in out
    assert f"{model}:v2 approved -> production" in out
    swap = next(line for line in out.splitlines() if "requests during the swap" in line)
    assert ", 0 failed," in swap, swap
    registry = SqliteRegistry(folder / ".loopml" / "registry.db")
    assert registry.aliases(model) == {"production": 2}  # judged as a canary first, whose alias then went
    v2 = registry.get(model, 2)
    for check in checks:
        assert v2.lineage["gates"][check]["passed"], (check, v2.lineage["gates"])
    assert {f"holdout_{m}" for m in metrics} <= set(v2.metrics), v2.metrics
    assert v2.lineage["task"] == {"regression": "regression", "multiclass": "multiclass"}.get(example, "binary")
    reports = [line.split("report: ", 1)[1].strip() for line in out.splitlines() if "report: " in line]
    validation = Path(next(r for r in reports if "validation-" in r)).read_text()
    assert "<img" in validation and "latency-ratio" in validation
