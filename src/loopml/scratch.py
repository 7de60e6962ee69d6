"""A scratch workspace: a project's configuration with loopml's state in a temporary folder.

Reproducing a model and re-judging one both need the rows a recorded dataset version gives through
the feature view, without touching what the team's workspace serves: its online store, registry,
store and trackers stay as they are. The scratch workspace has a local store, a SQLite registry, a
local feature store and the local tracker only; recorded dataset versions are copied into it by
content address.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loopml.config import BackendChoice, StorageConfig
from loopml.config_loader import load_config
from loopml.context import Workspace

if TYPE_CHECKING:
    from loopml.records import DatasetVersion


def scratch_workspace(config: Path | str, profile: str | None, folder: Path) -> Workspace:
    """The project at ``config`` (with ``profile``), its state under ``folder``."""
    loaded = load_config(config, profile=profile)
    loaded = loaded.model_copy(update={
        "home": folder / "home", "storage": StorageConfig(uri=str(folder / "store")),
        "registry": BackendChoice(backend="sqlite"), "trackers": {"local": {}},
        "feature_store": BackendChoice(backend="local"), "monitors": {}})
    return Workspace(loaded)


def copy_dataset_version(source: Workspace, target: Workspace, ref: str) -> DatasetVersion:
    """The recorded version's data and manifest, byte for byte, into ``target``'s store."""
    version = source.datasets.get(ref)
    prefix = version.data_key.rsplit("/", 1)[0]
    for key in (version.data_key, f"{prefix}/manifest.json"):
        if not target.store.exists(key):
            target.store.put(key, source.store.get(key))
    return target.datasets.get(ref)
