from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Quiet, offline Prefect for every test session (the flows' tests start their own server).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("LOOPML_ACTOR", "pytest")

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- tiers
# A test is marked by what it starts. The guard below fails an unmarked test the moment it starts
# one of these, so the fast tier (`make test-fast`: none of them) cannot silently grow slow.
STARTS = {
    "subprocess": "starts a process (a CLI run, a worker, a race of writers)",
    "server": "binds a listening socket (an in-process model server)",
    "training": "trains a model with torch",
    "prefect": "starts a Prefect server (flows, deployments, automations)",
    "external": "needs a binary outside Python (Prometheus, PostgreSQL, TorchServe, Redis, MLflow, moto)",
}
IMPLIES = {"subprocess": {"prefect", "external"}, "server": {"prefect", "external", "subprocess"}}
"""A mark that also allows what another one starts (a Prefect or external server is a subprocess)."""
QUICK_COMMANDS = {"git", "uname"}
"""Commands the loop itself runs for a moment (``git rev-parse HEAD`` for lineage, ``uname`` inside
``platform.platform()`` for the environment): not a tier's concern."""
REQUIRE_SERVICES = os.environ.get("LOOPML_REQUIRE_SERVICES") == "1"
"""Set by .ci/run: a test skipped for a missing service, binary or package fails instead."""

_current: list[pytest.Item] = []


def _allowed(kind: str) -> bool:
    if not _current:
        return True  # collection, session start: no test to charge
    marks = {m.name for m in _current[-1].iter_markers()}
    return bool(marks & ({kind, "slow"} | IMPLIES.get(kind, set())))


def _unmarked(kind: str, what: str = "") -> None:
    if not _allowed(kind):
        item = _current[-1]
        pytest.fail(f"{item.nodeid} {STARTS[kind]}{what} but is not marked @pytest.mark.{kind}; mark it so "
                    "`make test-fast` leaves it out", pytrace=True)


def pytest_configure(config: pytest.Config) -> None:
    for name, what in STARTS.items():
        config.addinivalue_line("markers", f"{name}: the test {what}")
    popen_init = subprocess.Popen.__init__
    listen = socket.socket.listen

    def guarded_popen(self, args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        program = Path(str(args[0] if isinstance(args, list | tuple) else args).split()[0]).name
        if program not in QUICK_COMMANDS:
            _unmarked("subprocess", f" ({str(args)[:200]})")
        popen_init(self, args, *rest, **kwargs)

    def guarded_listen(self, *args):  # type: ignore[no-untyped-def]
        _unmarked("server")
        return listen(self, *args)

    subprocess.Popen.__init__ = guarded_popen  # type: ignore[method-assign]
    socket.socket.listen = guarded_listen  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current.append(item)
    try:
        return (yield)
    finally:
        _current.pop()


@pytest.fixture(autouse=True)
def _training_is_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in trainers train through ``NetworkTrainer.fit``: charge it to the test's marks."""
    if _allowed("training"):
        return
    from loopml.trainers import NetworkTrainer

    fit = NetworkTrainer.fit

    def guarded(self, request):  # type: ignore[no-untyped-def]
        _unmarked("training")
        return fit(self, request)

    monkeypatch.setattr(NetworkTrainer, "fit", guarded)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """With LOOPML_REQUIRE_SERVICES=1, a skip fails, except a conformance suite's "not applicable"
    (a plugin that does not have an optional verb)."""
    report: pytest.TestReport = yield
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.removeprefix("Skipped: ").startswith("not applicable"):
            report.outcome = "failed"
            report.longrepr = (f"skipped, but LOOPML_REQUIRE_SERVICES=1 (CI) requires every service: {reason}. "
                               "Install it (make services, make install) rather than skipping.")
    return report


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


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One Prefect server for the session's tests that only need an API (flows run ad hoc, CLI runs):
    ``{"PREFECT_API_URL": …}`` for a subprocess's environment; in-process flows use ``prefect_settings``.
    Tests that deploy, run workers or automations start their own."""
    from servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-api")) as url:
        yield {"PREFECT_API_URL": url}


@pytest.fixture
def prefect_settings(prefect_api: dict[str, str]) -> Iterator[None]:
    """In-process flows talk to the session's Prefect server (instead of a temporary one each)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api["PREFECT_API_URL"]}):
        yield


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
