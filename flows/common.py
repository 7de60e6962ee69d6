"""Shared orchestration helpers: opening the workspace, task defaults, report artifacts."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.settings import temporary_settings
from prefect.states import State

from loopml import openlineage
from loopml.capabilities import LinkingTracker
from loopml.context import Workspace
from loopml.keys import prefect_artifact_key
from loopml.plugins import get_plugin_manager
from loopml.records import GateReport
from loopml.report_index import pointer_markdown, shareable_url
from loopml.reports import checks_markdown


def label_run(ws: Workspace, name: str, **labels: object) -> None:
    """Name the current flow run (``train-churn-84a1be88``, ``pipeline-churn-v3``) and tag it with
    the project and model, so runs are found by what they did, not by a random name. Outside a flow
    run, or if the API refuses, nothing happens (a label is never worth failing a run)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return
    wanted = {"loopml", f"project:{ws.config.project}", *(f"{k}:{v}" for k, v in labels.items() if v is not None)}
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id)
            client.update_flow_run(run_id, name=name, tags=sorted(set(current.tags or ()) | wanted))
    except Exception as exc:
        logging.getLogger(__name__).debug("could not label flow run %s: %s", run_id, exc)


P = ParamSpec("P")
R = TypeVar("R")
HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextlib.contextmanager
def stages_share_the_heartbeat() -> Iterator[None]:
    """Stage flows started inside this block send no heartbeats of their own.

    A stage flow (``loopml-ingest`` inside ``loopml-pipeline``) runs in its parent's process and
    thread, so the parent's heartbeat already tells Prefect the process is alive. Prefect (3.6, since
    heartbeats default to every 180 s) ends every flow run by joining a heartbeat thread that sleeps
    in one-second steps: about one second per stage, four to seven per loop, for nothing. Set
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` explicitly and every stage sends heartbeats again.
    """
    if any(os.environ.get(name) for name in HEARTBEAT_VARIABLES):
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def runs_stages(fn: Callable[P, R]) -> Callable[P, R]:
    """For a flow whose body calls stage flows: the body runs inside :func:`stages_share_the_heartbeat`.

    Put it under ``@flow``, so the parent's own run (and its heartbeat) has started when it applies."""

    @functools.wraps(fn)
    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        with stages_share_the_heartbeat():
            return fn(*args, **kwargs)

    return body


def emits_lineage(fn: Callable[P, R]) -> Callable[P, R]:
    """For every flow: with ``[openlineage]`` in the project's config, the run sends OpenLineage
    START and COMPLETE (or FAIL) events, naming the dataset and model versions it read and wrote
    (:mod:`loopml.openlineage`). Put it under ``@flow``: the run id is the Prefect flow run's id."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        from prefect.runtime import flow_run

        given = signature.bind_partial(*args, **kwargs).arguments
        emitter = openlineage.emitter_for(given.get("config"), given.get("profile"))  # type: ignore[arg-type]
        run_id = str(flow_run.id or uuid.uuid4())
        job = flow_run.flow_name or fn.__name__
        with openlineage.flow_run(emitter, job, run_id, given.values()) as run:
            result = fn(*args, **kwargs)
            run.produced(result)
            return result

    # Prefect validates parameters against the signature, evaluating string annotations in the
    # wrapper's module: hand it the flow's own, evaluated where the flow is defined.
    body.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    body.__loopml_lineage__ = True  # type: ignore[attr-defined]
    return body


def transient_io_error(task: object, task_run: object, state: State) -> bool:
    """Retry only what can pass by itself (network, disk I/O), never bad data or a bad config."""
    error = state.data if isinstance(state.data, BaseException) else None
    return isinstance(error, OSError | TimeoutError)


# loopml caches by content hash itself (see loopml.stages.training.train), so Prefect's input hashing of
# workspace objects is switched off; retries are only for transient I/O errors.
TASK_DEFAULTS = {"cache_policy": NO_CACHE}
IO_RETRIES = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": transient_io_error}


@functools.lru_cache(maxsize=8)
def workspace(config: str | None = None, profile: str | None = None) -> Workspace:
    """One workspace per (config, profile) per process, so the served model outlives a flow."""
    return Workspace.open(config, profile=profile)


def on_failure(stage: str) -> list:
    """Prefect ``on_failure`` hook list that fires ``loopml_on_error`` for a failed stage."""

    def notify(flow: object, flow_run: object, state: State) -> None:
        error = state.result(raise_on_failure=False)
        if not isinstance(error, BaseException):
            error = RuntimeError(state.message or f"{stage} failed")
        params = getattr(flow_run, "parameters", {}) or {}
        try:
            ws = workspace(params.get("config"), params.get("profile"))
        except Exception:  # the config itself may be what failed: no project context then
            get_plugin_manager().notify("loopml_on_error", stage=stage, error=error)
        else:
            ws.notify("loopml_on_error", stage=stage, error=error)

    return [notify]


def save_report(ws: Workspace, key: str, html: str) -> Path:
    """Copy a stored HTML report to ``<home>/reports/`` so a person can open it."""
    path = ws.context.home / "reports" / Path(key).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def report_link(ws: Workspace, key: str, artifact_key: str, title: str) -> str:
    """Where to read a stored report, as markdown: a link when the store gives one another machine
    opens (a presigned S3 URL; also published as a Prefect link artifact), and always the command
    that fetches it from the store. Never a ``file://`` path on the worker."""
    from prefect.artifacts import create_link_artifact

    url = shareable_url(ws, key)
    if url is not None:
        create_link_artifact(key=prefect_artifact_key(artifact_key), link=url, link_text=title,
                             description=f"{title} ({key} in {ws.store.uri})")
    return pointer_markdown(ws, key, title, url)


def tracker_links(ws: Workspace, run_id: str) -> str:
    """Markdown links to a run in every tracker that can name a URL for it (MLflow over HTTP, W&B online)."""
    links = []
    for tracker in ws.trackers:
        linking = ws.ability(tracker, LinkingTracker)
        try:
            url = linking.run_url(run_id) if linking is not None else None
        except Exception:
            url = None
        if url:
            links.append(f"[{tracker.name}]({url})")
    return ("Tracked in: " + ", ".join(links)) if links else ""


def gate_markdown(report: GateReport, link: str, tracked: str = "") -> str:
    """The gate table as Prefect markdown; ``link`` is a markdown link (or a path) to the HTML report."""
    lines = [f"# Validation of {report.model_name}: {'PASSED' if report.passed else 'REJECTED'}",
             f"**{report.candidate}** vs production **{report.baseline or 'none'}**", "",
             *checks_markdown(report.checks)]
    if report.importance:
        lines += ["", "| feature | permutation importance |", "|---|---|",
                  *(f"| {name} | {value:.4g} |" for name, value in report.importance.items())]
    lines += ["", f"Full report with plots: {link}"] + (["", tracked] if tracked else [])
    return "\n".join(lines)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=prefect_artifact_key(key), markdown=markdown, description=description)
