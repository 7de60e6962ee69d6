"""The contract file itself: every hook documented to the template, and every one reachable."""

from __future__ import annotations

import inspect

import pytest

from loopml import hookspecs
from loopml.testing import HookRecorder, fresh_plugin_manager

ALL_HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("loopml_"))


def test_every_hook_is_prefixed_and_classified() -> None:
    assert set(ALL_HOOKS) == (set(hookspecs.REGISTRATION_HOOKS) | set(hookspecs.LIFECYCLE_HOOKS)
                              | set(hookspecs.DECISION_HOOKS))


def test_a_promotion_veto_is_the_first_reason_and_a_raising_veto_blocks() -> None:
    from loopml.plugins import hookimpl

    class Quiet:
        @hookimpl
        def loopml_before_promotion(self, model_name, candidate, report):
            return None

    class Freeze:
        @hookimpl
        def loopml_before_promotion(self, model_name):
            return f"{model_name} is frozen"

    class Broken:
        @hookimpl
        def loopml_before_promotion(self, report):
            raise RuntimeError("policy service down")

    args = {"model_name": "churn", "candidate": "c", "report": None}
    assert fresh_plugin_manager(Quiet()).first_veto(**args) is None
    assert fresh_plugin_manager(Quiet(), Freeze()).first_veto(**args).endswith("churn is frozen")
    blocked = fresh_plugin_manager(Broken()).first_veto(**args)
    assert "failed while deciding" in blocked and "policy service down" in blocked


@pytest.mark.parametrize("hook", ALL_HOOKS)
def test_every_hook_docstring_follows_the_template(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    for part in ("When:", "Args:", "Returns:", "Call semantics:", "Failure policy:", "Example::"):
        assert part in doc, f"{hook} docstring lacks {part!r}"


def test_registration_hooks_are_all_collected() -> None:
    catalogue = fresh_plugin_manager().catalogue()
    assert set(catalogue) == set(hookspecs.REGISTRATION_HOOKS.values())


@pytest.mark.parametrize("hook", hookspecs.LIFECYCLE_HOOKS)
def test_every_lifecycle_hook_reaches_plugins(hook: str) -> None:
    recorder = HookRecorder()
    manager = fresh_plugin_manager(recorder)
    argnames = inspect.signature(getattr(hookspecs, hook)).parameters
    kwargs = {name: f"value-of-{name}" for name in argnames}
    assert manager.notify(hook, **kwargs) == []
    context = kwargs.pop("context")
    assert recorder.named(hook) == [kwargs]
    assert recorder.contexts == [(hook, context)]


def test_hook_recorder_covers_every_lifecycle_hook() -> None:
    assert {n for n in dir(HookRecorder) if n.startswith("loopml_")} == set(hookspecs.LIFECYCLE_HOOKS)
