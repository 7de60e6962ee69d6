"""`loopml runs list|show` and `loopml store gc`: tracked runs and store maintenance."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import (
    ConfigOpt,
    JsonOpt,
    ProfileOpt,
    out,
    print_json,
    runs_app,
    store_app,
    workspace,
)
from loopml.errors import LoopmlError
from loopml.maintenance import clean_store
from loopml.protocols import QueryableTracker


def _queryable_tracker(ws):
    for tracker in ws.trackers:
        queryable = ws.ability(tracker, QueryableTracker)
        if queryable is not None:
            return queryable
    raise LoopmlError("no configured tracker can be queried; enable the local tracker: "
                      "[trackers.local] in loopml.toml")


@runs_app.command("list")
def runs_list(experiment: Annotated[str | None, typer.Option("--experiment", "-e")] = None,
              config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List tracked runs, newest first."""
    runs = _queryable_tracker(workspace(config, profile)).list_runs(experiment)
    if as_json:
        print_json(runs)
        return
    table = Table()
    for col in ("run", "experiment", "name", "status", "started", "metrics"):
        table.add_column(col)
    for r in runs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.latest_metrics().items())[:4])
        table.add_row(r.run_id, r.experiment, r.name, r.status,
                      r.started_at.strftime("%Y-%m-%d %H:%M:%S"), metrics)
    out.print(table)


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument()], config: ConfigOpt = None,
              profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Show a run's params, metric series, tags and artifacts."""
    run = _queryable_tracker(workspace(config, profile)).get_run(run_id)
    if as_json:
        print_json(run)
        return
    out.print(f"[bold]{run.run_id}[/] {run.experiment}/{run.name} {run.status}")
    out.print_json(json.dumps({"params": run.params, "tags": run.tags,
                               "latest_metrics": run.latest_metrics(),
                               "artifacts": run.artifacts}))


@store_app.command("gc")
def store_gc(config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
             keep_predictions_days: Annotated[int | None, typer.Option(
                 help="First remove prediction-log segments older than this many days (at least 7).")] = None,
             keep_reports_days: Annotated[int | None, typer.Option(
                 help="First remove reports older than this many days.")] = None,
             grace_seconds: Annotated[float | None, typer.Option(
                 help="S3: sweep only blobs no writer touched for this long (default gc_grace_seconds, "
                      "an hour).")] = None) -> None:
    """Remove blobs no key refers to and temp files of killed writers (safe while writers run, here
    and, on S3, on other machines); with --keep-*-days, expire old log segments and reports first."""
    ws = workspace(config, profile)
    cleaned = clean_store(ws, predictions_days=keep_predictions_days, reports_days=keep_reports_days,
                          grace_seconds=grace_seconds)
    if as_json:
        print_json(cleaned.to_dict())
        return
    out.print(cleaned.describe(ws.store.uri), soft_wrap=True)
