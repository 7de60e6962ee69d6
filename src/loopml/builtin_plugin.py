"""loopml's own backends, registered through the same hooks as any plugin.

Their modules import only the standard library and pydantic, so listing plugins stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopml.backends.local_store import LocalStoreOptions
from loopml.backends.local_tracker import LocalTrackerOptions
from loopml.backends.sqlite_registry import SqliteRegistryOptions
from loopml.plugins import hookimpl
from loopml.specs import BackendSpec


def _local_store(options: Any, ctx: Any) -> Any:
    from loopml.backends.local_store import LocalArtifactStore

    uri: str = options.uri
    path = Path(uri[len("file://"):]) if uri.startswith("file://") else Path(uri)
    return LocalArtifactStore(path if path.is_absolute() else ctx.root / path, fsync=options.fsync)


def _local_tracker(options: Any, ctx: Any) -> Any:
    from loopml.backends.local_tracker import LocalTracker

    return LocalTracker(ctx.resolve(options.root, "runs"))


def _sqlite_registry(options: Any, ctx: Any) -> Any:
    from loopml.backends.sqlite_registry import SqliteRegistry

    return SqliteRegistry(ctx.resolve(options.path, "registry.db"), timeout=options.timeout)


@hookimpl
def loopml_artifact_stores() -> list[BackendSpec]:
    return [BackendSpec("local", _local_store, LocalStoreOptions,
                        "content-addressed files on local disk", uri_schemes=("file",))]


@hookimpl
def loopml_trackers() -> list[BackendSpec]:
    return [BackendSpec("local", _local_tracker, LocalTrackerOptions,
                        "runs as plain files under <home>/runs")]


@hookimpl
def loopml_registries() -> list[BackendSpec]:
    return [BackendSpec("sqlite", _sqlite_registry, SqliteRegistryOptions,
                        "SQLite file with compare-and-set aliases and append-only history")]
