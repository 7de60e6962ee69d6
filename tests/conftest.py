from __future__ import annotations

import os
from pathlib import Path

import pytest

# Quiet, offline Prefect for every test session (the flows' tests start their own server).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("LOOPML_ACTOR", "pytest")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no plugin switches, no profile, and a fresh plugin manager cache."""
    from loopml.plugins import reset_plugin_manager

    for var in ("LOOPML_LOAD_PLUGINS", "LOOPML_DISABLE_PLUGINS", "LOOPML_STRICT_PLUGINS",
                "LOOPML_PROFILE", "LOOPML_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("LOOPML__"):
            monkeypatch.delenv(var)
    reset_plugin_manager()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory with a minimal loopml.toml, as the working directory."""
    (tmp_path / "loopml.toml").write_text('project = "test"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests run in a shuffled order (pytest-randomly), except the steps of a scenario module
    (``pytestmark = pytest.mark.in_order``), which keep their written order at the places the
    shuffle gave that module: each step builds on the one before, on purpose."""
    by_module: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.get_closest_marker("in_order") is not None:
            by_module.setdefault(item.nodeid.split("::")[0], []).append(index)
    for indices in by_module.values():
        steps = sorted((items[i] for i in indices), key=lambda item: item.location[1])
        for index, item in zip(indices, steps, strict=True):
            items[index] = item


pytest_collection_modifyitems = pytest.hookimpl(trylast=True)(pytest_collection_modifyitems)
