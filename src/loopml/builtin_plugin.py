"""loopml's own backends, registered through the same hooks as any plugin.

Their modules import only the standard library and pydantic, so listing plugins stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopml.backends.local_features import LocalFeatureStore, LocalFeatureStoreOptions
from loopml.backends.local_store import LocalArtifactStore, LocalStoreOptions
from loopml.backends.local_tracker import LocalTracker, LocalTrackerOptions
from loopml.backends.log_monitor import LogMonitor, LogMonitorOptions
from loopml.backends.sqlite_registry import SqliteRegistry, SqliteRegistryOptions
from loopml.hookspecs import hookimpl
from loopml.serving.builtin import (
    BuiltinServing,
    BuiltinServingOptions,  # numpy and stdlib only; torch loads on first deploy
)
from loopml.specs import BackendSpec
from loopml.trainers import (  # pydantic only; torch loads when training
    MlpOptions,
    TorchModuleOptions,
    mlp_trainer,
    torch_module_trainer,
)


def _local_store(options: Any, ctx: Any) -> Any:
    uri: str = options.uri
    path = Path(uri[len("file://"):]) if uri.startswith("file://") else Path(uri)
    return LocalArtifactStore(path if path.is_absolute() else ctx.root / path, fsync=options.fsync)


def _local_tracker(options: Any, ctx: Any) -> Any:
    return LocalTracker(ctx.resolve(options.root, "runs"))


def _sqlite_registry(options: Any, ctx: Any) -> Any:
    return SqliteRegistry(ctx.resolve(options.path, "registry.db"), timeout=options.timeout)


def _local_features(options: Any, ctx: Any) -> Any:
    return LocalFeatureStore(ctx.resolve(options.root, "features"))


def _builtin_serving(options: Any, ctx: Any) -> Any:
    return BuiltinServing(options, ctx.resolve(options.log_dir, "predictions"))


def _log_monitor(options: Any, ctx: Any) -> Any:
    return LogMonitor(ctx.resolve(options.path, "monitoring/events.jsonl"))


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


@hookimpl
def loopml_feature_stores() -> list[BackendSpec]:
    return [BackendSpec("local", _local_features, LocalFeatureStoreOptions,
                        "point-in-time joins in pandas, online values in SQLite")]


@hookimpl
def loopml_serving_backends() -> list[BackendSpec]:
    return [BackendSpec("builtin", _builtin_serving, BuiltinServingOptions,
                        "threaded JSON HTTP server on 127.0.0.1 with canary routing and hot swap")]


@hookimpl
def loopml_monitors() -> list[BackendSpec]:
    return [BackendSpec("drift-log", _log_monitor, LogMonitorOptions,
                        "JSONL log of observations, drift reports and promotions")]


def _mlp(options: Any, ctx: Any) -> Any:
    return mlp_trainer(options, ctx)


def _torch_module(options: Any, ctx: Any) -> Any:
    return torch_module_trainer(options, ctx)


@hookimpl
def loopml_trainers() -> list[BackendSpec]:
    return [BackendSpec("mlp", _mlp, MlpOptions, "loopml's tabular MLP (one-hot categoricals, one hidden layer)"),
            BackendSpec("torch-module", _torch_module, TorchModuleOptions,
                        "your own nn.Module from a factory 'package.module:function'")]
