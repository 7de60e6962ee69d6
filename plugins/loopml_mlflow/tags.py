"""The tags loopml puts on MLflow objects: MLflow's own (user, source, commit) and the datasets."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any

from loopml.records import RunInfo


def dataset_tags(model: Any) -> dict[str, str]:
    """Every dataset a version was built on: ``loopml.dataset.<role>`` each, as on the run, and
    ``loopml.dataset_version`` naming them all (``activity@…, labels@…``)."""
    datasets = dict(model.lineage.get("datasets") or {})
    if not datasets and model.dataset_version:
        datasets = {"labels": model.dataset_version}
    tags = {f"loopml.dataset.{role}": ref for role, ref in sorted(datasets.items())}
    tags["loopml.dataset_version"] = ", ".join(ref for _, ref in sorted(datasets.items()))
    return tags


def standard_tags(run: RunInfo) -> dict[str, str]:
    """MLflow's own tags for who ran what from where (shown in its UI's User and Source columns)."""
    try:
        user = os.environ.get("LOOPML_ACTOR") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    tags = {"mlflow.user": user, "mlflow.source.type": "JOB" if flow_run else "LOCAL",
            "mlflow.source.name": f"prefect flow run {flow_run}" if flow_run else Path(sys.argv[0] or "loopml").name}
    commit = run.tags.get("loopml.git_commit", "")
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags
