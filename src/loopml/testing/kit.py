"""Helpers for testing plugins and code that fires hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loopml.plugins import LoopmlPluginManager, build_plugin_manager, hookimpl


def fresh_plugin_manager(*plugins: object, entrypoints: bool = False,
                         strict: bool = True) -> LoopmlPluginManager:
    """A new manager with loopml's built-ins (and installed plugins if ``entrypoints``), plus
    ``plugins`` registered in-process. Strict by default, so a broken plugin fails the test."""
    manager = build_plugin_manager(entrypoints=entrypoints, strict=strict)
    for plugin in plugins:
        manager.register(plugin)
    return manager


@contextlib.contextmanager
def registered_plugin(manager: LoopmlPluginManager, plugin: object,
                      name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` for the duration of a ``with`` block."""
    registered = manager.register(plugin, name)
    try:
        yield registered
    finally:
        manager.unregister(registered)


@dataclass
class HookRecorder:
    """A plugin that records every lifecycle hook call: ``recorder.calls`` in order.

    ``recorder.named("loopml_after_promotion")`` gives the kwargs of each such call;
    ``recorder.contexts`` the :class:`loopml.records.HookContext` each call came with.
    """

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    contexts: list[tuple[str, Any]] = field(default_factory=list)

    def named(self, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    def _record(self, hook: str, context: Any, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))
        self.contexts.append((hook, context))

    @hookimpl
    def loopml_after_dataset_versioned(self, dataset: Any, created: bool, context: Any) -> None:
        self._record("loopml_after_dataset_versioned", context, dataset=dataset, created=created)

    @hookimpl
    def loopml_after_model_trained(self, run: Any, artifact_key: str, metrics: Any, context: Any) -> None:
        self._record("loopml_after_model_trained", context, run=run, artifact_key=artifact_key, metrics=metrics)

    @hookimpl
    def loopml_after_validation(self, report: Any, context: Any) -> None:
        self._record("loopml_after_validation", context, report=report)

    @hookimpl
    def loopml_after_model_registered(self, model: Any, context: Any) -> None:
        self._record("loopml_after_model_registered", context, model=model)

    @hookimpl
    def loopml_after_promotion(self, event: Any, context: Any) -> None:
        self._record("loopml_after_promotion", context, event=event)

    @hookimpl
    def loopml_on_drift(self, report: Any, context: Any) -> None:
        self._record("loopml_on_drift", context, report=report)

    @hookimpl
    def loopml_on_event(self, event: Any, context: Any) -> None:
        self._record("loopml_on_event", context, event=event)

    @hookimpl
    def loopml_on_error(self, stage: str, error: BaseException, context: Any) -> None:
        self._record("loopml_on_error", context, stage=stage, error=error)


