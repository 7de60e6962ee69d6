"""pytest fixtures for loopml plugin authors (auto-loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loopml.plugins import LoopmlPluginManager, reset_plugin_manager
from loopml.testing.kit import HookRecorder, fresh_plugin_manager


@pytest.fixture
def loopml_plugins() -> Iterator[LoopmlPluginManager]:
    """A fresh, strict plugin manager with loopml's built-in backends only."""
    reset_plugin_manager()
    yield fresh_plugin_manager()
    reset_plugin_manager()


@pytest.fixture
def loopml_hook_recorder(loopml_plugins: LoopmlPluginManager) -> HookRecorder:
    """A :class:`HookRecorder` registered in ``loopml_plugins``."""
    recorder = HookRecorder()
    loopml_plugins.register(recorder, "hook-recorder")
    return recorder
