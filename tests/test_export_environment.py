"""An exported model's environment files build the environment it was validated in: MLflow's own
``mlflow models serve --env-manager virtualenv`` creates a virtualenv from ``python_env.yaml`` (pyenv
for the Python, pip for the pinned requirements) and serves the export from it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from loop_steps import train_and_validate
from servers import free_port, start, stop, wait_http

from loopml.artifacts import Predictor
from loopml.context import Workspace
from loopml.examples import churn
from loopml.stages.drift_check import drift_reference
from loopml.stages.release import register_and_promote

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def pyenv() -> Path:
    found = shutil.which("pyenv") or str(Path.home() / ".pyenv" / "bin" / "pyenv")
    if not Path(found).is_file():
        pytest.fail("pyenv is missing: MLflow's virtualenv manager installs the recorded Python with it "
                    "(https://github.com/pyenv/pyenv#installation)")
    return Path(found)


def find_links(wheels: Path) -> str:
    """The loopml wheel beside whatever wheel house pip is already configured with (the CPU torch)."""
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                                capture_output=True, text=True).stdout.strip()
    return " ".join(filter(None, [str(wheels), os.environ.get("PIP_FIND_LINKS", ""), configured]))


def test_mlflow_builds_the_pinned_environment_and_serves_the_export_from_it(tmp_path: Path) -> None:
    if importlib.util.find_spec("virtualenv") is None:
        pytest.fail("the virtualenv package is missing (make install: it is in loopml's dev extra)")
    config = churn.init_project(tmp_path / "p", n_customers=500, seed=2)
    ws = Workspace.open(config, profile="ci")
    candidate, evaluation, key, baseline = train_and_validate(ws)
    model, _ = register_and_promote(ws, candidate, evaluation.report, key, baseline)
    folder = tmp_path / "p" / ".loopml" / "artifacts" / "exports" / "models" / "churn" / str(model.version)
    pins = dict(line.split("==") for line in (folder / "requirements.txt").read_text().split())
    assert set(pins) == {"loopml", "torch", "numpy", "pandas", "pyarrow", "mlflow"}
    rows = pd.DataFrame(drift_reference(ws, model)).drop(columns=["model_output"], errors="ignore").head(20)
    expected = Predictor.from_bytes(ws.store.get(model.artifact_key)).predict_frame(rows).reshape(-1)

    wheels = tmp_path / "wheels"  # loopml as a team's package index would hold it
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    envs, log, port = tmp_path / "envs", tmp_path / "serve.log", free_port()
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    env = {**os.environ, "MLFLOW_ENV_ROOT": str(envs), "PIP_FIND_LINKS": find_links(wheels),
           "PATH": os.pathsep.join([str(pyenv().parent), os.path.dirname(sys.executable), os.environ["PATH"]])}
    proc = start([exe, "models", "serve", "-m", str(folder), "--env-manager", "virtualenv", "--host", "127.0.0.1",
                  "--port", str(port)], log, env=env, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=1200, log=log)  # builds the environment first
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", rows.to_csv(index=False).encode(),
                                         {"Content-Type": "text/csv"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answered = json.loads(response.read())["predictions"]
    finally:
        stop(proc)
    assert [a if isinstance(a, float) else a["prediction"] for a in answered] == pytest.approx(list(expected),
                                                                                                abs=1e-6)
    [python] = envs.glob("mlflow-*/bin/python")  # the environment MLflow built: the validated versions
    script = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
              "('loopml', 'torch', 'numpy', 'pandas', 'pyarrow', 'mlflow')}))")
    versions = json.loads(subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                                         check=True).stdout)
    assert versions == pins and versions["torch"].endswith("+cpu")  # not PyPI's CUDA build
