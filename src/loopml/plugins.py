"""The plugin manager: loads plugins, collects backend specs, calls lifecycle hooks safely.

Load order: the hookspecs, then loopml's built-in backends, then entry points of group
``loopml.plugins`` (filtered by ``LOOPML_LOAD_PLUGINS`` / ``LOOPML_DISABLE_PLUGINS`` and by the
project's ``load_plugins`` / ``disable_plugins``), then the project-local plugin modules named in
config, then plugins registered in-process. Every load ends with a check that each ``loopml_*``
hook implementation matches a hookspec.

An installed plugin that fails to import or has an invalid hook is isolated: it is not loaded, the
problem names its distribution, and everything else works (``LOOPML_STRICT_PLUGINS=1`` turns every
such problem into an error). Lifecycle hooks go through pluggy, so ``wrapper=True`` implementations
run around them; each plain implementation is isolated so one that raises never stops the others.
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

from loopml import builtin_plugin, hookspecs
from loopml.errors import PluginError, UnknownBackendError
from loopml.plugin_policy import hook_failures, with_failure_policy
from loopml.plugin_selection import PluginSelection
from loopml.records import HookFailure
from loopml.specs import KINDS, BackendKind, BackendSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "loopml.plugins"
hookimpl = hookspecs.hookimpl


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
        self.selection = PluginSelection()
        self.disabled: dict[str, EntryPoint | None] = {}  # not loaded on purpose (None: the built-ins)

    # ---------------------------------------------------------------- loading
    def register(self, plugin: object, name: str | None = None, *, source: str = "inprocess",
                 distribution: str | None = None, version: str | None = None) -> str:
        """Register a plugin object or module; validates its hooks at once."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.has_plugin(name) or self.pm.is_blocked(name):
            raise PluginError(f"a plugin named {name!r} is already registered (or blocked)")
        try:
            self.pm.register(with_failure_policy(plugin, name), name=name)
        except pluggy.PluginValidationError as exc:  # bad arguments for a hook
            raise PluginError(f"plugin {name!r} has an invalid hook implementation: {exc}") from exc
        try:
            self._check_hooks(name, plugin)
        except PluginError:
            self.pm.unregister(name=name)
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
        self.register(builtin_plugin, "loopml", source="builtin")

    def load_entrypoints(self, selection: PluginSelection | None = None) -> None:
        self.selection = selection or PluginSelection.from_env()
        by_name: dict[str, list[EntryPoint]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            by_name.setdefault(ep.name, []).append(ep)
        for name in sorted(by_name):
            eps = _distinct(by_name[name])
            if len(eps) > 1:  # the first one wins (sys.path order, like imports); say so
                found = ", ".join(f"{_dist(ep) or '?'} ({ep.value})" for ep in eps)
                self._problem(name, _dist(eps[0]),
                              f"{len(eps)} distributions declare the loopml plugin {name!r}: {found}; "
                              f"loaded the one from {_dist(eps[0]) or '?'}. Uninstall the others")
            if not self.selection.allows(name):
                log.debug("plugin %s not loaded (%s)", name, ", ".join(self.selection.sources))
                self.disabled[name] = eps[0]
                continue
            self._load_entrypoint(eps[0])
        unknown = sorted(self.selection.named() - set(by_name) - {"loopml"})
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self._problem(name, None, f"{' / '.join(self.selection.sources)} names plugin {name!r}, which "
                                      f"is not installed (installed: {', '.join(sorted(by_name)) or 'none'}){hint}")

    def _load_entrypoint(self, ep: EntryPoint) -> None:
        dist = _dist(ep)
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
        try:
            self.register(plugin, ep.name, source="entrypoint", distribution=dist, version=ver)
        except PluginError as exc:  # e.g. a misspelled hook: isolate this plugin, not every command
            self._problem(ep.name, dist, f"{exc}; plugin {ep.name!r} from distribution {dist!r} is not "
                                         f"loaded: upgrade or fix it, or skip it with "
                                         f"LOOPML_DISABLE_PLUGINS={ep.name}")

    def load_local(self, modules: Iterable[str]) -> None:
        """Load project-local plugin modules named in config (``plugins = ["pkg.mod"]``)."""
        for mod_name in modules:
            if self.pm.has_plugin(mod_name):  # an installed plugin named in [plugins.<name>] for its settings
                continue
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
            self._raise_if_disabled(kind, name)
            known = ", ".join(sorted(specs)) or "(none)"
            close = difflib.get_close_matches(name, sorted(specs), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownBackendError(
                f"unknown {kind.replace('_', ' ')} {name!r}{hint}; choose one of: {known}. "
                "A backend from a plugin appears once its package is installed: see "
                "`loopml plugins list`"
            )
        return specs[name][1]

    def _raise_if_disabled(self, kind: BackendKind, name: str, *, scheme: str | None = None) -> None:
        """A backend that a disabled plugin would provide is reported as disabled, not unknown."""
        hook = next(h for h, k in hookspecs.REGISTRATION_HOOKS.items() if k == kind)
        for plugin_name, ep in sorted(self.disabled.items()):
            try:
                module = builtin_plugin if ep is None else ep.load()
                specs = getattr(module, hook, lambda: [])() or []
            except Exception:  # a disabled plugin may well be broken: that is why it is disabled
                continue
            if any((scheme in s.uri_schemes) if scheme else s.name == name for s in specs):
                what = f"URI scheme {scheme!r}" if scheme else f"{kind.replace('_', ' ')} {name!r}"
                dist = "loopml" if ep is None else _dist(ep)
                raise UnknownBackendError(
                    f"the {what} comes from plugin {plugin_name!r} (distribution {dist!r}), which is "
                    f"disabled by {' / '.join(self.selection.sources) or 'LOOPML_DISABLE_PLUGINS'}; "
                    "enable it there")

    def store_for_scheme(self, scheme: str) -> BackendSpec:
        for _plugin, spec in self.catalogue()["artifact_store"].values():
            if scheme in spec.uri_schemes:
                return spec
        self._raise_if_disabled("artifact_store", "", scheme=scheme)
        known = sorted({s for _, sp in self.catalogue()["artifact_store"].values() for s in sp.uri_schemes})
        raise UnknownBackendError(
            f"no artifact store handles URI scheme {scheme!r}; known schemes: {', '.join(known)}. "
            "Install the plugin for it (e.g. pip install 'loopml[s3]' for s3://)"
        )

    # ---------------------------------------------------------------- lifecycle
    def notify(self, hook_name: str, **kwargs: Any) -> list[HookFailure]:
        """Call a lifecycle hook through pluggy; a raise is recorded, never propagated.

        Plain implementations are isolated one by one (see ``FAILURE_POLICY``);
        ``wrapper=True`` implementations run around them and see the call. A wrapper that raises
        is recorded too (pluggy cannot say which wrapper it was, so it is named ``wrapper``)."""
        if hook_name not in hookspecs.LIFECYCLE_HOOKS:
            raise PluginError(f"{hook_name!r} is not a lifecycle hook; choose one of: "
                              + ", ".join(hookspecs.LIFECYCLE_HOOKS))
        caller = getattr(self.pm.hook, hook_name)
        spec_args = caller.spec.argnames if caller.spec else ()
        kwargs.setdefault("context", None)  # e.g. loopml_on_error when the config failed to load
        failures: list[HookFailure] = []
        token = hook_failures.set(failures)
        try:
            caller(**{k: v for k, v in kwargs.items() if k in spec_args})
        except Exception as exc:
            failure = HookFailure("wrapper", hook_name, exc)
            log.warning("%s (the flow continues)", failure, exc_info=exc)
            failures.append(failure)
        finally:
            hook_failures.reset(token)
        self.failures.extend(failures)
        return failures

    def settings_models(self) -> dict[str, type]:
        """Plugin name -> the model of its ``[plugins.<name>]`` table (``loopml_settings_model``)."""
        models: dict[str, type] = {}
        for impl in self.pm.hook.loopml_settings_model.get_hookimpls():
            try:
                models[impl.plugin_name] = impl.function()
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed to declare its settings "
                                  f"(loopml_settings_model): {type(exc).__name__}: {exc}") from exc
        return models

    def first_veto(self, **kwargs: Any) -> str | None:
        """``loopml_before_promotion`` through pluggy (``firstresult``, wrappers around it): the first
        reason to block, named after its plugin, or None. A raise blocks (fail closed)."""
        kwargs.setdefault("context", None)
        return self.pm.hook.loopml_before_promotion(**kwargs)

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


def _dist(ep: EntryPoint) -> str | None:
    return ep.dist.name if ep.dist else None


def _distinct(eps: list[EntryPoint]) -> list[EntryPoint]:
    """One entry point per (distribution, target): a package seen twice on sys.path is one."""
    seen: dict[tuple[str | None, str], EntryPoint] = {}
    for ep in eps:
        seen.setdefault((_dist(ep), ep.value), ep)
    return list(seen.values())


def build_plugin_manager(local_plugins: Iterable[str] = (), *, strict: bool | None = None,
                         entrypoints: bool = True, load_plugins: Iterable[str] | None = None,
                         disable_plugins: Iterable[str] = ()) -> LoopmlPluginManager:
    """Build a fresh manager (not cached). Tests and tools use this; apps use the cached one.

    ``load_plugins`` / ``disable_plugins`` are the project's own lists (``loopml.toml``); they apply
    on top of ``LOOPML_LOAD_PLUGINS`` / ``LOOPML_DISABLE_PLUGINS``."""
    manager = LoopmlPluginManager(strict=strict)
    selection = PluginSelection.from_env(None if load_plugins is None else tuple(load_plugins),
                                         tuple(disable_plugins))
    manager.selection = selection
    if "loopml" not in selection.disable:  # the built-ins load unless disabled by name
        manager.load_builtins()
    else:
        manager.disabled["loopml"] = None
    if entrypoints:
        manager.load_entrypoints(selection)
    manager.load_local(local_plugins)
    return manager


@functools.cache
def _cached(local_plugins: tuple[str, ...], env_key: tuple[str | None, ...],
            load_plugins: tuple[str, ...] | None, disable_plugins: tuple[str, ...]) -> LoopmlPluginManager:
    return build_plugin_manager(local_plugins, load_plugins=load_plugins, disable_plugins=disable_plugins)


def get_plugin_manager(local_plugins: Iterable[str] = (), *, load_plugins: Iterable[str] | None = None,
                       disable_plugins: Iterable[str] = ()) -> LoopmlPluginManager:
    """The process-wide manager for this set of project plugins and switches (cached)."""
    env_key = tuple(os.environ.get(k) for k in
                    ("LOOPML_LOAD_PLUGINS", "LOOPML_DISABLE_PLUGINS", "LOOPML_STRICT_PLUGINS"))
    return _cached(tuple(local_plugins), env_key, None if load_plugins is None else tuple(sorted(load_plugins)),
                   tuple(sorted(disable_plugins)))


def reset_plugin_manager() -> None:
    """Forget cached managers (after installing a plugin in-process, or between tests)."""
    _cached.cache_clear()
