"""The plugin manager: loads plugins, collects backend specs, calls lifecycle hooks safely.

Load order: the hookspecs, then loopml's built-in backends, then entry points of group
``loopml.plugins`` (filtered by ``LOOPML_LOAD_PLUGINS`` / ``LOOPML_DISABLE_PLUGINS``), then the
project-local plugin modules named in config, then plugins registered in-process. Every load ends
with a check that each ``loopml_*`` hook implementation matches a hookspec.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from loopml import hookspecs
from loopml.errors import PluginError, UnknownBackendError
from loopml.records import HookFailure
from loopml.specs import KINDS, BackendKind, BackendSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "loopml.plugins"
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin as `loopml plugins list` shows it."""

    name: str
    source: str  # builtin | entrypoint | local | inprocess
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    backends: tuple[str, ...]  # "kind:name"


@dataclass(frozen=True)
class LoadProblem:
    """A plugin that could not be loaded (a warning unless strict)."""

    plugin: str
    distribution: str | None
    error: str


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _is_strict() -> bool:
    return os.environ.get("LOOPML_STRICT_PLUGINS", "").lower() in {"1", "true", "yes"}


class LoopmlPluginManager:
    """A pluggy manager with loopml's loading rules, backend catalogue and isolated notifications."""

    def __init__(self, *, strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = _is_strict() if strict is None else strict
        self.problems: list[LoadProblem] = []
        self.failures: list[HookFailure] = []
        self._sources: dict[str, tuple[str, str | None, str | None]] = {}
        self._catalogue: dict[BackendKind, dict[str, tuple[str, BackendSpec]]] | None = None

    # ---------------------------------------------------------------- loading
    def register(self, plugin: object, name: str | None = None, *, source: str = "inprocess",
                 distribution: str | None = None, version: str | None = None) -> str:
        """Register a plugin object or module; validates its hooks at once."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.has_plugin(name) or self.pm.is_blocked(name):
            raise PluginError(f"a plugin named {name!r} is already registered (or blocked)")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # bad arguments for a hook
            raise PluginError(f"plugin {name!r} has an invalid hook implementation: {exc}") from exc
        try:
            self._check_hooks(name, plugin)
        except PluginError:
            self.pm.unregister(plugin)
            raise
        self._sources[name] = (source, distribution, version)
        self._catalogue = None
        return name

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
            self._sources.pop(name, None)
            self._catalogue = None

    def load_builtins(self) -> None:
        from loopml import builtin_plugin

        self.register(builtin_plugin, "loopml", source="builtin")

    def load_entrypoints(self) -> None:
        only = _env_list("LOOPML_LOAD_PLUGINS")
        disabled = set(_env_list("LOOPML_DISABLE_PLUGINS") or [])
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            if (only is not None and ep.name not in only) or ep.name in disabled:
                log.debug("plugin %s not loaded (LOOPML_LOAD_PLUGINS/LOOPML_DISABLE_PLUGINS)", ep.name)
                continue
            self._load_entrypoint(ep)

    def _load_entrypoint(self, ep: EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else None
        ver = ep.dist.version if ep.dist else None
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break loopml
            self._problem(
                ep.name, dist,
                f"plugin {ep.name!r} from distribution {dist!r} failed to import "
                f"({type(exc).__name__}: {exc}); reinstall it, or skip it with "
                f"LOOPML_DISABLE_PLUGINS={ep.name}",
            )
            return
        self.register(plugin, ep.name, source="entrypoint", distribution=dist, version=ver)

    def load_local(self, modules: Iterable[str]) -> None:
        """Load project-local plugin modules named in config (``plugins = ["pkg.mod"]``)."""
        for mod_name in modules:
            try:
                module = importlib.import_module(mod_name)
            except Exception as exc:
                raise PluginError(
                    f"project plugin module {mod_name!r} (config key 'plugins') failed to import: "
                    f"{type(exc).__name__}: {exc}; check the module path and that its directory "
                    "is on sys.path"
                ) from exc
            if not self.pm.has_plugin(mod_name):
                self.register(module, mod_name, source="local")

    def block(self, name: str) -> None:
        self.pm.set_blocked(name)

    def _problem(self, plugin: str, dist: str | None, message: str) -> None:
        if self.strict:
            raise PluginError(message + " (strict mode: LOOPML_STRICT_PLUGINS=1)")
        log.warning(message)
        self.problems.append(LoadProblem(plugin, dist, message))

    def _check_hooks(self, name: str, plugin: object) -> None:
        known = set(hookspecs.REGISTRATION_HOOKS) | set(hookspecs.LIFECYCLE_HOOKS) | set(hookspecs.DECISION_HOOKS)
        marker = f"{hookspecs.PROJECT}_impl"
        for attr in dir(plugin):
            if not attr.startswith(f"{hookspecs.PROJECT}_"):
                continue
            is_impl = hasattr(getattr(plugin, attr, None), marker)
            if attr in known:
                if not is_impl:
                    log.warning("plugin %r defines %s without @hookimpl, so it is never called",
                                name, attr)
                continue
            if not is_impl:
                continue
            close = difflib.get_close_matches(attr, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluginError(
                f"plugin {name!r} defines unknown hook {attr!r}{hint} "
                f"(hooks are listed in loopml.hookspecs)"
            )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r}: {exc}") from exc

    # ---------------------------------------------------------------- backends
    def catalogue(self) -> dict[BackendKind, dict[str, tuple[str, BackendSpec]]]:
        """kind -> backend name -> (plugin name, spec). Two plugins claiming one name is an error."""
        if self._catalogue is not None:
            return self._catalogue
        result: dict[BackendKind, dict[str, tuple[str, BackendSpec]]] = {k: {} for k in KINDS}
        for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in reversed(caller.get_hookimpls()):
                try:
                    specs = impl.function() or []
                except Exception as exc:
                    self._problem(impl.plugin_name, self._sources.get(impl.plugin_name, (None, None))[1],
                                  f"plugin {impl.plugin_name!r} failed in {hook_name}: "
                                  f"{type(exc).__name__}: {exc}")
                    continue
                for spec in specs:
                    if not isinstance(spec, BackendSpec):
                        raise PluginError(
                            f"plugin {impl.plugin_name!r}: {hook_name} must return BackendSpec "
                            f"objects, got {type(spec).__name__}"
                        )
                    if spec.name in result[kind]:
                        other = result[kind][spec.name][0]
                        raise PluginError(
                            f"two plugins declare the {kind} backend {spec.name!r}: {other!r} and "
                            f"{impl.plugin_name!r}; uninstall one, or disable it with "
                            f"LOOPML_DISABLE_PLUGINS"
                        )
                    result[kind][spec.name] = (impl.plugin_name, spec)
        self._catalogue = result
        return result

    def backend(self, kind: BackendKind, name: str) -> BackendSpec:
        specs = self.catalogue()[kind]
        if name not in specs:
            known = ", ".join(sorted(specs)) or "(none)"
            close = difflib.get_close_matches(name, sorted(specs), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownBackendError(
                f"unknown {kind.replace('_', ' ')} {name!r}{hint}; choose one of: {known}. "
                "A backend from a plugin appears once its package is installed: see "
                "`loopml plugins list`"
            )
        return specs[name][1]

    def store_for_scheme(self, scheme: str) -> BackendSpec:
        for _plugin, spec in self.catalogue()["artifact_store"].values():
            if scheme in spec.uri_schemes:
                return spec
        known = sorted({s for _, sp in self.catalogue()["artifact_store"].values() for s in sp.uri_schemes})
        raise UnknownBackendError(
            f"no artifact store handles URI scheme {scheme!r}; known schemes: {', '.join(known)}. "
            "Install the plugin for it (e.g. pip install 'loopml[s3]' for s3://)"
        )

    # ---------------------------------------------------------------- lifecycle
    def notify(self, hook_name: str, **kwargs: Any) -> list[HookFailure]:
        """Call every implementation of a lifecycle hook; a raise is recorded, never propagated."""
        if hook_name not in hookspecs.LIFECYCLE_HOOKS:
            raise PluginError(f"{hook_name!r} is not a lifecycle hook; choose one of: "
                              + ", ".join(hookspecs.LIFECYCLE_HOOKS))
        caller = getattr(self.pm.hook, hook_name)
        failures: list[HookFailure] = []
        for impl in reversed(caller.get_hookimpls()):
            args = {a: kwargs[a] for a in impl.argnames}
            try:
                impl.function(**args)
            except Exception as exc:
                failure = HookFailure(impl.plugin_name, hook_name, exc)
                log.warning("%s (the flow continues)", failure, exc_info=exc)
                failures.append(failure)
        self.failures.extend(failures)
        return failures

    def first_veto(self, **kwargs: Any) -> str | None:
        """``loopml_before_promotion``: the first reason to block, or None. A raise blocks (fail closed)."""
        caller = self.pm.hook.loopml_before_promotion
        for impl in reversed(caller.get_hookimpls()):
            args = {a: kwargs[a] for a in impl.argnames}
            try:
                reason = impl.function(**args)
            except Exception as exc:
                log.warning("plugin %r failed in loopml_before_promotion: promotion blocked", impl.plugin_name,
                            exc_info=exc)
                return f"plugin {impl.plugin_name!r} failed while deciding: {type(exc).__name__}: {exc}"
            if reason is not None:
                return f"{impl.plugin_name}: {reason}"
        return None

    # ---------------------------------------------------------------- listing
    def plugins(self) -> list[PluginInfo]:
        by_plugin: dict[str, list[str]] = {}
        for kind, specs in self.catalogue().items():
            for backend_name, (plugin_name, _spec) in specs.items():
                by_plugin.setdefault(plugin_name, []).append(f"{kind}:{backend_name}")
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is hookspecs:
                continue
            source, dist, ver = self._sources.get(name, ("inprocess", None, None))
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            infos.append(PluginInfo(name, source, dist, ver, hooks, tuple(sorted(by_plugin.get(name, [])))))
        return sorted(infos, key=lambda p: (p.source != "builtin", p.name))


def build_plugin_manager(local_plugins: Iterable[str] = (), *, strict: bool | None = None,
                         entrypoints: bool = True) -> LoopmlPluginManager:
    """Build a fresh manager (not cached). Tests and tools use this; apps use the cached one."""
    manager = LoopmlPluginManager(strict=strict)
    disabled = set(_env_list("LOOPML_DISABLE_PLUGINS") or [])
    if "loopml" not in disabled:
        manager.load_builtins()
    if entrypoints:
        manager.load_entrypoints()
    manager.load_local(local_plugins)
    return manager


@functools.cache
def _cached(local_plugins: tuple[str, ...], env_key: tuple[str | None, ...]) -> LoopmlPluginManager:
    return build_plugin_manager(local_plugins)


def get_plugin_manager(local_plugins: Iterable[str] = ()) -> LoopmlPluginManager:
    """The process-wide manager for this set of project plugins and switches (cached)."""
    env_key = tuple(os.environ.get(k) for k in
                    ("LOOPML_LOAD_PLUGINS", "LOOPML_DISABLE_PLUGINS", "LOOPML_STRICT_PLUGINS"))
    return _cached(tuple(local_plugins), env_key)


def reset_plugin_manager() -> None:
    """Forget cached managers (after installing a plugin in-process, or between tests)."""
    _cached.cache_clear()
