"""Flow tasks retry transient I/O only; bad data fails at once."""

from __future__ import annotations

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


@pytest.mark.slow
def test_a_failed_stage_fires_loopml_on_error_once_and_fails_the_flow(prefect_settings, tmp_path) -> None:
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


class FlakyStore:
    """The local store, but the first ``fail_first`` writes drop the connection (a transient error)."""

    def __init__(self, inner, fail_first: int) -> None:
        self.inner, self.uri, self.left = inner, inner.uri, fail_first
        self.attempts = 0

    def put(self, key, data, *, metadata=None):
        self.attempts += 1
        if self.left > 0:
            self.left -= 1
            raise ConnectionResetError("connection reset by peer (injected)")
        return self.inner.put(key, data, metadata=metadata)

    def __getattr__(self, name):  # get, info, list, ... as the local store does them
        return getattr(self.inner, name)


@pytest.mark.slow
def test_a_task_that_fails_transiently_is_retried_by_prefect_and_the_flow_completes(
        prefect_settings, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest
    from loopml.backends.local_store import LocalArtifactStore, LocalStoreOptions
    from loopml.context import Workspace
    from loopml.examples import churn
    from loopml.plugins import get_plugin_manager, hookimpl
    from loopml.specs import BackendSpec

    built: list[FlakyStore] = []

    class Flaky:
        @hookimpl
        def loopml_artifact_stores(self):
            def make(options, ctx):
                built.append(FlakyStore(LocalArtifactStore(options.uri), fail_first=1))
                return built[-1]
            return [BackendSpec("flaky", make, LocalStoreOptions)]

    churn.init_project(tmp_path, n_customers=200)
    config = tmp_path / "loopml.toml"
    config.write_text(config.read_text().replace('[storage]\n', '[storage]\nbackend = "flaky"\n', 1))
    get_plugin_manager().register(Flaky(), "flaky")
    state = ingest(config=str(tmp_path / "loopml.toml"), datasets=["labels"], return_state=True)
    assert state.is_completed(), state.message
    assert built[0].left == 0 and built[0].attempts >= 2  # the injected failure happened
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=flow_run)
    [task_run] = [r for r in runs if r.name.startswith("ingest_dataset")]
    assert task_run.run_count == 2 and task_run.state.is_completed()  # failed once, then succeeded
    with get_client(sync_client=True) as client:  # the run says what it did and for which project
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "ingest-churn-example-labels"
    assert {"loopml", "project:churn-example"} <= set(run.tags)
    ws = Workspace.open(tmp_path / "loopml.toml", manager=get_plugin_manager())
    assert ws.datasets.get("labels@latest").row_count > 0


def _heartbeats_and_completions(api: str, run_ids: list[str]) -> dict[str, set[str]]:
    import httpx

    body = {"filter": {"event": {"prefix": ["prefect.flow-run."]},
                       "any_resource": {"id": [f"prefect.flow-run.{r}" for r in run_ids]}}, "limit": 50}
    response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    events = response.json()["events"]
    seen: dict[str, set[str]] = {r: set() for r in run_ids}
    for event in events:
        run = event["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run.")
        if run in seen:
            seen[run].add(event["event"])
    return seen


@pytest.mark.slow
def test_stage_flows_inside_a_loop_leave_the_heartbeat_to_their_parent(prefect_api, prefect_settings,
                                                                       monkeypatch) -> None:
    """Prefect joins each flow run's heartbeat thread (one-second sleeps) as the run ends: ~1 s per stage."""
    from churn_models import wait_for
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.common import HEARTBEAT_VARIABLES, runs_stages

    for name in HEARTBEAT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ids: dict[str, str] = {}

    @flow(name="stage")
    def stage() -> None:
        ids["stage"] = flow_run.id

    @flow(name="loop")
    @runs_stages
    def loop(x: int = 1) -> int:
        """Docs stay."""
        ids["loop"] = flow_run.id
        stage()
        return x

    assert loop(x=3) == 3 and loop.__doc__ == "Docs stay." and "x" in loop.parameters.properties
    api = prefect_api["PREFECT_API_URL"]
    runs = [ids["loop"], ids["stage"]]
    wait_for(lambda: all("prefect.flow-run.Completed" in e for e in _heartbeats_and_completions(api, runs).values()),
             timeout=60, what="both runs' Completed events")
    seen = _heartbeats_and_completions(api, runs)
    assert "prefect.flow-run.heartbeat" in seen[ids["loop"]]
    assert "prefect.flow-run.heartbeat" not in seen[ids["stage"]]
