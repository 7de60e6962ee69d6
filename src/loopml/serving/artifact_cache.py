"""A registered model's artifact on this machine's disk, for loading into a server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import ModelVersion


def artifact_file(ws: Workspace, model: ModelVersion) -> Path:
    """The model artifact on local disk (downloaded once, verified by sha256)."""
    path = ws.context.home / "cache" / "models" / model.name / f"v{model.version}-{model.artifact_sha256[:12]}.pt"
    if not path.is_file():
        ws.store.download(model.artifact_key, path)
    return path
