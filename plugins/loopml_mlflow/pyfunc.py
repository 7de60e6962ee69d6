"""The ``pyfunc`` flavour of a loopml model: MLflow loads the loopml artifact, never a pickle.

An MLflow model logged by loopml is a folder with ``MLmodel`` and ``model.pt2`` (the same torch.export
archive loopml serves). ``MLmodel`` names this module as the pyfunc ``loader_module``, so
``mlflow.pyfunc.load_model("models:/churn@production")`` and ``mlflow models serve`` call
:func:`_load_pyfunc`, which checks the archive exactly as loopml's own server does (raw tensors only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopml.artifacts import Predictor
from loopml.exports import conda_yaml, mlflow_signature_json, python_env_yaml, requirements_txt

ARTIFACT_FILE = "model.pt2"


class LoopmlPyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns inside its PyFuncModel wrapper."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Rows (a DataFrame, or a list of dicts) -> the score, value or class of each row."""
        import numpy as np
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        scores = self.predictor.predict_frame(frame)
        signature = self.predictor.signature
        if signature.task == "multiclass":
            return pd.Series([signature.classes[i] for i in np.argmax(scores, axis=1)], name="prediction")
        return pd.Series(np.asarray(scores, dtype=float).reshape(-1), name="prediction")


def _load_pyfunc(data_path: str) -> LoopmlPyfuncModel:
    path = Path(data_path)
    if path.is_dir():
        path = path / ARTIFACT_FILE
    return LoopmlPyfuncModel(Predictor.from_bytes(path.read_bytes()))


def mlflow_signature(signature: Any) -> Any:
    """An MLflow ModelSignature from a loopml Signature (:func:`loopml.exports.mlflow_signature_json`:
    numeric ``long`` or ``double`` as declared, categorical ``string``), so MLflow enforces
    types and reads CSV."""
    from mlflow.models.signature import ModelSignature

    return ModelSignature.from_dict(mlflow_signature_json(signature))


def write_model_folder(folder: Path, artifact: bytes, *, run_id: str | None, model_id: str | None,
                       artifact_path: str | None) -> Path:
    """An MLflow model folder (``MLmodel`` + ``model.pt2``) for this artifact."""
    import mlflow
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT_FILE).write_bytes(artifact)
    predictor = Predictor.from_bytes(artifact)
    model = Model(artifact_path=artifact_path, run_id=run_id, model_uuid=model_id, model_id=model_id,
                  signature=mlflow_signature(predictor.signature),
                  metadata={"loopml_task": predictor.signature.task})
    add_to_model(model, loader_module=__name__, data=ARTIFACT_FILE, conda_env="conda.yaml",
                 python_env="python_env.yaml")
    model.add_flavor("loopml", artifact=ARTIFACT_FILE, format=predictor.signature.format,
                     task=predictor.signature.task, mlflow_version=mlflow.__version__)
    model.save(str(folder / "MLmodel"))
    (folder / "requirements.txt").write_text(requirements_txt())  # what was validated, pinned
    (folder / "python_env.yaml").write_text(python_env_yaml())
    (folder / "conda.yaml").write_text(conda_yaml())
    return folder
