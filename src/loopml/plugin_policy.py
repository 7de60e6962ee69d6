"""How a plugin's hook implementation may fail, applied when the plugin is registered.

Lifecycle hooks are isolated: a raise is recorded (and logged) and the loop goes on, so one broken
observer never stops a flow. The promotion veto fails closed: a raise blocks the promotion. Both
are wrappers put around the plugin's own functions before pluggy registers it (pluggy's public
registration; ``wrapper=True`` implementations are left as written and run around the others).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import types
from typing import Any

from loopml import hookspecs
from loopml.records import HookFailure

log = logging.getLogger("loopml.plugins")

hook_failures: contextvars.ContextVar[list[HookFailure] | None] = contextvars.ContextVar(
    "loopmlhook_failures", default=None)



def _isolated(function: Any, plugin: str, hook_name: str) -> Any:
    """A lifecycle implementation whose raise is recorded (and logged), never propagated."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            failure = HookFailure(plugin, hook_name, exc)
            log.warning("%s (the flow continues)", failure, exc_info=exc)
            sink = hook_failures.get()
            if sink is not None:
                sink.append(failure)
            return None

    return call


def _fail_closed(function: Any, plugin: str, hook_name: str) -> Any:
    """A veto implementation: its reason named after the plugin; a raise is a veto (fail closed)."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            reason = function(*args, **kwargs)
        except Exception as exc:
            log.warning("plugin %r failed in %s: promotion blocked", plugin, hook_name, exc_info=exc)
            return f"plugin {plugin!r} failed while deciding: {type(exc).__name__}: {exc}"
        if reason is None:
            return None
        said = str(reason)
        return said if said.startswith((f"{plugin}:", f"{plugin} ")) else f"{plugin}: {said}"  # named once

    return call


FAILURE_POLICY: dict[str, Any] = {**{hook: _isolated for hook in hookspecs.LIFECYCLE_HOOKS},
                                  "loopml_before_promotion": _fail_closed}
"""How a plugin's implementation of a hook may fail: lifecycle hooks are isolated (the loop goes on),
the veto fails closed. Applied when the plugin is registered; ``wrapper=True`` implementations
run as written, around the others, as pluggy calls them."""


def with_failure_policy(plugin: object, name: str) -> object:
    """What pluggy registers for ``plugin``: the plugin itself, or, when it implements lifecycle or
    veto hooks, a namespace of its hook implementations with those wrapped in their failure policy
    (pluggy's public registration; its hook records are never rewritten)."""
    overrides = {}
    for hook_name, policy in FAILURE_POLICY.items():
        function = getattr(plugin, hook_name, None)
        opts = getattr(function, f"{hookspecs.PROJECT}_impl", None)
        if callable(function) and isinstance(opts, dict) and not (opts.get("wrapper") or opts.get("hookwrapper")):
            overrides[hook_name] = policy(function, name, hook_name)
    if not overrides:
        return plugin
    hooks = {attr: getattr(plugin, attr) for attr in dir(plugin) if attr.startswith(f"{hookspecs.PROJECT}_")}
    return types.SimpleNamespace(**{**hooks, **overrides})
