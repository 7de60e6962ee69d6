"""Flow tasks retry transient I/O only; bad data fails at once."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from flows.common import transient_io_error
from loopml.errors import ConfigError, DataValidationError


def test_only_transient_io_errors_are_retried() -> None:
    def state(error: BaseException) -> SimpleNamespace:
        return SimpleNamespace(data=error)

    assert transient_io_error(None, None, state(ConnectionResetError("reset")))
    assert transient_io_error(None, None, state(TimeoutError()))
    assert not transient_io_error(None, None, state(DataValidationError("bad row")))
    assert not transient_io_error(None, None, state(ConfigError("typo")))


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server with its own database for this module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_a_failed_stage_fires_loopml_on_error_once_and_fails_the_flow(prefect_server, tmp_path) -> None:
    from flows.ingest import ingest
    from loopml.examples import churn
    from loopml.plugins import get_plugin_manager
    from loopml.testing import HookRecorder

    churn.init_project(tmp_path, n_customers=200)
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text(labels.read_text().replace(",0,", ",maybe,", 1))
    recorder = HookRecorder()
    get_plugin_manager().register(recorder, "recorder")
    with pytest.raises(DataValidationError, match="churned"):
        ingest(config=str(tmp_path / "loopml.toml"), datasets=["labels"])
    calls = recorder.named("loopml_on_error")
    assert len(calls) == 1 and calls[0]["stage"] == "ingest"
    assert isinstance(calls[0]["error"], DataValidationError)
