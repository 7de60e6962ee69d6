"""A readable export of each approved model version: ``exports/models/<name>/<version>/``.

The store keeps objects by content (``objects/ab/ab12…`` plus small refs), which tools outside loopml
cannot browse. Each approved version is therefore also written as plain files beside them, at a path
anyone can read with the store's own client (``aws s3 cp -r``, a file browser), and that a model
server can load:

* ``model.pt2``: the loopml artifact (a torch.export archive with its signature inside);
* ``MLmodel`` + ``requirements.txt``: an MLflow model with a ``pyfunc`` flavour whose loader reads
  ``model.pt2`` (no pickle). ``mlflow.pyfunc.load_model("<folder>")`` and ``mlflow models serve``
  work on it, and so does KServe with ``storageUri: s3://<bucket>/<prefix>/exports/models/<name>/<version>``
  and ``modelFormat: mlflow`` (the runtime image needs ``loopml`` installed, as requirements.txt says);
* ``model_card.md``, ``validation_report.html`` and ``loopml.json`` (ref, sha256, lineage).

The export is written by the store's optional ``export`` verb; a store without it is skipped.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loopml import __version__
from loopml.artifacts import Predictor
from loopml.capabilities import ExportingStore

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GateReport, ModelVersion

ARTIFACT_FILE = "model.pt2"


def export_path(model: ModelVersion) -> str:
    return f"models/{model.name}/{model.version}"


def mlflow_signature_json(signature: Any) -> dict[str, str]:
    """MLflow's signature of a loopml model, as ``MLmodel`` stores it: numeric features ``long``
    when their dataset declares them ``int``, else ``double``; categorical ones ``string``; the
    output ``double`` (a score or a value) or ``string`` (a class). MLflow enforces it on every
    input and parses CSV bodies with these types, so a category stored as ``0``/``1`` reaches the
    model as the text ingest stored."""
    inputs = [{"type": "long" if name in signature.integer else "double", "name": name, "required": True}
              for name in signature.numeric]
    inputs += [{"type": "string", "name": name, "required": True} for name in signature.categorical]
    output = [{"type": "string" if signature.task == "multiclass" else "double", "name": "prediction",
               "required": True}]
    return {"inputs": json.dumps(inputs), "outputs": json.dumps(output)}


def mlmodel_yaml(model: ModelVersion, signature: Any) -> str:
    """An MLflow ``MLmodel`` file, written without importing MLflow."""
    import yaml

    body = {
        "artifact_path": export_path(model),
        "flavors": {
            "python_function": {"loader_module": "loopml_mlflow.pyfunc", "data": ARTIFACT_FILE,
                                "python_version": platform.python_version(),
                                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}},
            "loopml": {"artifact": ARTIFACT_FILE, "format": signature.format, "task": signature.task,
                       "loopml_version": __version__},
        },
        "model_uuid": model.artifact_sha256[:32],
        "utc_time_created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "signature": {**mlflow_signature_json(signature), "params": None},
        "metadata": {"loopml_ref": model.ref, "loopml_sha256": model.artifact_sha256},
    }
    return yaml.safe_dump(body, sort_keys=False)


def _installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, its local build tag kept, or None when it is not
    installed. ``torch==2.13.0`` would take PyPI's CUDA build (5.5 GB of environment, measured) where
    ``2.13.0+cpu`` was validated; the pin says which build (pip finds it on PyTorch's CPU index,
    ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``, or a wheel house)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements_txt() -> str:
    """What the export needs, pinned to the versions (and builds) it was validated with here."""
    pins = [f"loopml=={__version__}"]
    for name in ("torch", "numpy", "pandas", "pyarrow", "mlflow"):
        version = _installed(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return "\n".join(pins) + "\n"


def python_env_yaml() -> str:
    """MLflow's ``python_env.yaml``: the Python it was validated on, and the pinned requirements
    (``mlflow models serve --env-manager virtualenv`` builds from it)."""
    build = [f"{name}=={v}" if (v := _installed(name)) else name for name in ("pip", "setuptools", "wheel")]
    return (f"python: {platform.python_version()}\nbuild_dependencies:\n"
            + "".join(f"  - {b}\n" for b in build) + "dependencies:\n  - -r requirements.txt\n")


def conda_yaml() -> str:
    """MLflow's ``conda.yaml``: the same pins for conda. MLflow reads an ``env`` entry only when it
    names both files (``mlflow models serve --env-manager virtualenv`` fails with ``KeyError:
    'conda'`` otherwise)."""
    import yaml

    pip = _installed("pip")
    body = {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [f"python={platform.python_version()}", f"pip<={pip}" if pip else "pip",
                             {"pip": requirements_txt().split()}]}
    return yaml.safe_dump(body, sort_keys=False)


def export_model(ws: Workspace, model: ModelVersion, report: GateReport | None = None) -> str | None:
    """Write the readable export of ``model``; returns its folder's URI (None: the store has no
    ``export`` verb). Idempotent: the same version always exports the same files."""
    store = ws.ability(ws.store, ExportingStore)
    if store is None:
        return None
    folder = export_path(model)
    artifact = ws.store.get(model.artifact_key)
    signature = Predictor.from_bytes(artifact).signature
    files: dict[str, bytes] = {
        ARTIFACT_FILE: artifact,
        "MLmodel": mlmodel_yaml(model, signature).encode(),
        "requirements.txt": requirements_txt().encode(),
        "python_env.yaml": python_env_yaml().encode(),
        "conda.yaml": conda_yaml().encode(),
        "loopml.json": json.dumps({"ref": model.ref, "status": model.status, "sha256": model.artifact_sha256,
                                   "run_id": model.run_id, "dataset_version": model.dataset_version,
                                   "git_commit": model.git_commit, "lineage": model.lineage},
                                  indent=2, sort_keys=True, default=str).encode(),
    }
    if report is not None:
        files["model_card.md"] = model_card(model, report).encode()
        key = model.lineage.get("validation_report")
        if key and ws.store.exists(key):
            files["validation_report.html"] = ws.store.get(key)
    uri = ""
    for name, data in files.items():
        uri = store.export(f"{folder}/{name}", data)
    return uri.rsplit("/", 1)[0]


def importance_lines(importance: dict[str, float] | Any) -> list[str]:
    """The card's "what the model relies on" section (permutation importance on the holdout)."""
    if not importance:
        return []
    return ["", "## What the model relies on", "",
            "Drop of the primary metric on the holdout when the feature's values are shuffled:", "",
            *(f"- {name}: {value:.4f}" for name, value in importance.items())]


def model_card(model: ModelVersion, report: GateReport) -> str:
    """A short Markdown card: what the model is, what it was trained on, how it was judged."""
    lines = [f"# {model.ref} ({model.status})", "",
             f"- registered {model.created_at:%Y-%m-%d %H:%M UTC} by {model.created_by}",
             f"- datasets: {', '.join(f'{k} {v}' for k, v in model.lineage.get('datasets', {}).items())}",
             f"- features ({model.lineage.get('feature_view')}): {', '.join(model.lineage.get('features', []))}",
             f"- git commit {model.git_commit}; training run {model.run_id}",
             f"- environment: {', '.join(f'{k} {v}' for k, v in model.environment.items())}", "",
             f"- task: {model.params.get('task', 'binary')}; trainer: {model.params.get('trainer', 'mlp')}", "",
             "## Metrics", "", *(f"- {k}: {v:.4f}" for k, v in model.metrics.items()), "",
             f"## Validation against {report.baseline or 'no production model'}", "",
             "| check | verdict | reason |", "|---|---|---|",
             *(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.reason} |" for c in report.checks),
             *importance_lines(report.importance)]
    return "\n".join(lines) + "\n"
