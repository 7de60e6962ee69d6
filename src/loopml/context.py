"""The workspace: config + plugins + the backends they select, built lazily and validated early."""

from __future__ import annotations

import functools
import getpass
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from loopml import protocols
from loopml.capabilities import OPTIONAL, GovernedRegistry, StoreLoggingServing, abilities_of
from loopml.config import LoopmlConfig
from loopml.config_loader import load_config, redact_url_credentials, validate_options
from loopml.dataset_rules import ColumnRule, rules_from_config
from loopml.datasets import DatasetCatalog
from loopml.errors import ConfigError, PluginError
from loopml.plugins import LoopmlPluginManager, get_plugin_manager
from loopml.records import HookContext, HookFailure
from loopml.specs import BackendKind, BackendSpec

if TYPE_CHECKING:
    from pydantic import BaseModel

    from loopml.protocols import (
        ArtifactStore,
        FeatureStore,
        ModelRegistry,
        Monitor,
        ServingBackend,
        Tracker,
        Trainer,
    )

log = logging.getLogger(__name__)


Ability = TypeVar("Ability")


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory may know about the project besides its own options."""

    project: str
    root: Path
    home: Path

    def resolve(self, path: Path | str | None, default: str) -> Path:
        """A path option: absolute as given, relative to the project root, or ``home/default``."""
        if path is None:
            return self.home / default
        path = Path(path)
        return path if path.is_absolute() else self.root / path


@dataclass(frozen=True)
class SelectedBackend:
    kind: BackendKind
    config_key: str
    spec: BackendSpec
    options: BaseModel


def _importable(root: Path) -> None:
    """Put the project folder on ``sys.path`` (once), like Kedro does for a project's ``src``."""
    path = str(Path(root).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def current_actor() -> str:
    """Who is acting, for registry history: ``$LOOPML_ACTOR`` or ``user@host``."""
    env = os.environ.get("LOOPML_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Workspace:
    """One project: its config, its plugins and its backends.

    ``Workspace.open()`` validates every selected backend's options at once, so a misspelled
    backend or option fails before any work starts. Backends are built on first use.
    """

    def __init__(self, config: LoopmlConfig, manager: LoopmlPluginManager | None = None) -> None:
        self.config = config
        home = config.home_dir
        if home.exists() and not home.is_dir():
            raise ConfigError(f"{config.source_file or 'loopml.toml'}: home = {str(config.home)!r} is a file, not a "
                              "folder; point home at a folder for loopml's state (default '.loopml')")
        _importable(config.root)  # project code (plugins, model factories) imports like a package
        self.manager = manager or get_plugin_manager(tuple(config.plugin_modules), load_plugins=config.load_plugins,
                                                     disable_plugins=config.disable_plugins)
        self.context = BackendContext(config.project, config.root, config.home_dir)
        self.plugin_settings = self._plugin_settings()
        self.hook_context = HookContext(config.project, config.profile, config.root, config.home_dir, config,
                                        self.plugin_settings)
        self.selected = self._select_all()
        self._abilities: dict[int, tuple[object, frozenset[type]]] = {}

    def _plugin_settings(self) -> dict[str, Any]:
        """Each plugin's ``[plugins.<name>]`` table validated by the model it declares (defaults for
        a plugin with a model and no table); a table no plugin claims is an error."""
        models = self.manager.settings_models()
        where = self.config.source_file or "loopml.toml"
        settings: dict[str, Any] = {}
        for name, table in self.config.plugin_tables.items():
            if name not in models:
                raise ConfigError(f"{where}: [plugins.{name}] sets {', '.join(sorted(table)) or 'nothing'}, but plugin "
                                  f"{name!r} declares no settings (no loopml_settings_model hook); plugins with "
                                  f"settings: {', '.join(sorted(models)) or 'none'}")
            settings[name] = validate_options(models[name], table or {}, f"plugins.{name}")
        for name, model in models.items():
            if name not in settings:
                try:
                    settings[name] = model()
                except Exception:  # a required setting: the plugin's hooks see none until it is set
                    continue
        return settings

    @classmethod
    def open(cls, path: Path | str | None = None, *, profile: str | None = None,
             overrides: Mapping[str, Any] | None = None,
             manager: LoopmlPluginManager | None = None) -> Workspace:
        return cls(load_config(path, profile=profile, overrides=overrides), manager)

    # ------------------------------------------------------------ selection
    def _select(self, kind: BackendKind, name: str, options: Mapping[str, Any], key: str) -> SelectedBackend:
        spec = self.manager.backend(kind, name)
        return SelectedBackend(kind, key, spec, validate_options(spec.options_model, options, key))

    def _select_all(self) -> dict[str, SelectedBackend | list[SelectedBackend]]:
        cfg = self.config
        storage_opts = {"uri": self._storage_uri(), **cfg.storage.options}
        if cfg.storage.backend:
            store = self._select("artifact_store", cfg.storage.backend, storage_opts, "storage")
        else:
            scheme = urlparse(cfg.storage.uri).scheme if "://" in cfg.storage.uri else "file"
            spec = self.manager.store_for_scheme(scheme)
            store = SelectedBackend("artifact_store", "storage", spec,
                                    validate_options(spec.options_model, storage_opts, "storage.options"))
        pipeline = cfg.pipeline
        trainer = (self._select("trainer", pipeline.model.trainer, pipeline.model.options,
                                "pipeline.model.options") if pipeline else None)
        checks = ([self._select("gate_check", n, o or {}, f"pipeline.gates.checks.{n}")
                   for n, o in pipeline.gates.checks.items()] if pipeline else [])
        return {
            "trainer": trainer,  # type: ignore[dict-item]
            "gate_check": checks,
            "artifact_store": store,
            "registry": self._select("registry", cfg.registry.backend, cfg.registry.options,
                                     "registry.options"),
            "feature_store": self._select("feature_store", cfg.feature_store.backend,
                                          cfg.feature_store.options, "feature_store.options"),
            "serving": self._select("serving", cfg.serving.backend, cfg.serving.options,
                                    "serving.options"),
            "tracker": [self._select("tracker", n, o or {}, f"trackers.{n}")
                        for n, o in cfg.trackers.items()],
            "monitor": [self._select("monitor", n, o or {}, f"monitors.{n}")
                        for n, o in cfg.monitors.items()],
        }

    def _storage_uri(self) -> str:
        uri = self.config.storage.uri
        if "://" in uri:
            return uri
        path = Path(uri)
        return str(path if path.is_absolute() else self.config.home_dir / path)

    def _build(self, selected: SelectedBackend) -> Any:
        try:
            built = selected.spec.factory(selected.options, self.context)
        except ImportError as exc:
            raise ConfigError(
                f"{selected.config_key}: backend {selected.spec.name!r} needs a package that is not "
                f"installed ({exc.name or exc}); install its extra, e.g. pip install "
                f"'loopml[{selected.spec.name}]'"
            ) from exc
        self._check_protocol(selected, built)
        self._abilities[id(built)] = (built, abilities_of(selected.kind, built))
        return built

    def ability(self, backend: object, ability: type[Ability]) -> Ability | None:
        """``backend`` as ``ability`` (a Protocol of :mod:`loopml.capabilities`) if it has that
        optional ability, else None. Found once per backend, when the workspace built it (an ad hoc
        object, such as a trainer given from Python, the first time it is asked about)."""
        known = self._abilities.get(id(backend))
        if known is None or known[0] is not backend:
            found = frozenset(a for kind in OPTIONAL.values() for a in kind if isinstance(backend, a))
            known = self._abilities[id(backend)] = (backend, found)
        return backend if ability in known[1] else None  # type: ignore[return-value]

    def _check_protocol(self, selected: SelectedBackend, built: Any) -> None:
        """What a factory built must have its kind's verbs: fail at once, naming the plugin."""
        if selected.kind == "gate_check":
            missing = [] if callable(built) else ["__call__"]
        else:
            proto = protocols.PROTOCOL_OF_KIND[selected.kind]
            missing = [m for m in protocols.members(proto) if not hasattr(built, m)]
        if missing:
            plugin = self.manager.catalogue()[selected.kind].get(selected.spec.name, ("?",))[0]
            raise PluginError(
                f"{selected.config_key}: the {selected.kind.replace('_', ' ')} backend {selected.spec.name!r} "
                f"of plugin {plugin!r} built a {type(built).__name__}, which lacks {', '.join(missing)}; "
                "its factory must return an object with every verb of the kind (see loopml.protocols)")

    # ------------------------------------------------------------ backends
    @functools.cached_property
    def store(self) -> ArtifactStore:
        return self._build(self.selected["artifact_store"])  # type: ignore[arg-type]

    @functools.cached_property
    def registry(self) -> ModelRegistry:
        registry: ModelRegistry = self._build(self.selected["registry"])
        wanted = self.config.approvals
        if wanted is not None:  # [approvals] in loopml.toml: the registry enforces it for every writer
            governed = self.ability(registry, GovernedRegistry)
            if governed is None:
                raise ConfigError(f"{self.config.source_file or 'loopml.toml'}: [approvals] is set but the registry "
                                  f"backend {self.selected['registry'].spec.name!r} does not enforce approvals; "
                                  "use the sqlite or postgres registry, or remove [approvals]")
            current = governed.policy()
            if any(current.get(alias, 0) != count for alias, count in wanted.items()):
                for alias, (before, after) in governed.apply_policy(wanted, actor=current_actor()).items():
                    log.warning("registry approval policy: moving %s now takes %d approval(s) (was %d)", alias,
                                after, before)
        return registry

    @functools.cached_property
    def feature_store(self) -> FeatureStore:
        return self._build(self.selected["feature_store"])  # type: ignore[arg-type]

    @functools.cached_property
    def serving(self) -> ServingBackend:
        backend = self._build(self.selected["serving"])
        logging_to_store = self.ability(backend, StoreLoggingServing)
        if shares_state(self) and logging_to_store is not None:  # in-process server: segments to the store
            logging_to_store.log_sink = self.store
        return backend  # type: ignore[return-value]

    @functools.cached_property
    def trackers(self) -> list[Tracker]:
        return [self._build(s) for s in self.selected["tracker"]]  # type: ignore[union-attr]

    @functools.cached_property
    def monitors(self) -> list[Monitor]:
        return [self._build(s) for s in self.selected["monitor"]]  # type: ignore[union-attr]

    @functools.cached_property
    def trainer(self) -> Trainer:
        """The configured trainer; building it imports a ``torch-module`` factory (errors name the key)."""
        selected = self.selected.get("trainer")
        if selected is None:
            raise ConfigError(f"{self.config.source_file or 'loopml.toml'} has no [pipeline] table, so "
                              "there is nothing to train")
        return self._build(selected)  # type: ignore[arg-type]

    @functools.cached_property
    def gate_checks(self) -> list[tuple[str, Any]]:
        """(name, check callable) for every check turned on in ``[pipeline.gates.checks]``."""
        return [(s.spec.name, self._build(s)) for s in self.selected["gate_check"]]  # type: ignore[union-attr]

    @functools.cached_property
    def datasets(self) -> DatasetCatalog:
        return DatasetCatalog(self.store)

    def dataset_rules(self, name: str) -> tuple[ColumnRule, ...] | None:
        """The declared column rules of dataset ``name`` (None: infer the schema)."""
        cfg = self.config.datasets.get(name)
        return rules_from_config(cfg.columns) if cfg and cfg.columns else None

    def notify(self, hook: str, **kwargs: Any) -> list[HookFailure]:
        """Fire a lifecycle hook with this project as its ``context``."""
        return self.manager.notify(hook, context=self.hook_context, **kwargs)

    def describe(self) -> dict[str, Any]:
        """Selected backends and their validated options, secrets masked (for `loopml config`)."""
        def one(s: SelectedBackend) -> dict[str, Any]:
            return {"backend": s.spec.name,
                    "options": redact_url_credentials(s.options.model_dump(mode="json"))}
        out: dict[str, Any] = {"project": self.config.project, "root": str(self.config.root),
                               "profile": self.config.profile}
        for key, value in self.selected.items():
            if value is None:
                continue
            out[key] = [one(v) for v in value] if isinstance(value, list) else one(value)
        return out


def shares_state(ws: Workspace) -> bool:
    """True when the serving backend uploads its prediction log (``log_to_store``): then monitors
    read the log, and keep their cursor and alert state, in the artifact store, not on local disk."""
    serving = ws.selected["serving"]
    return serving is not None and bool(getattr(serving.options, "log_to_store", False))  # a builtin option
