"""`loopml init|run|demo|config`: a project, its pipeline and its resolved configuration."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import (
    ConfigOpt,
    JsonOpt,
    ProfileOpt,
    app,
    flows_importable,
    out,
    print_json,
    progress_bar,
    project_file,
    tracebacks_only_when_debugging,
    workspace,
)
from loopml.errors import LoopmlError


@app.command("init")
def init(folder: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
         example: Annotated[str, typer.Option(
             help="Example to create: churn (binary), regression, multiclass, or custom-model "
                  "(your own nn.Module and gate).")] = "churn",
         customers: Annotated[int, typer.Option(help="How many customers to generate.")] = 4000) -> None:
    """Create an example project: loopml.toml plus generated data."""
    from loopml.examples import churn

    if example not in churn.EXAMPLES:
        raise LoopmlError(f"unknown example {example!r}; choose one of: {', '.join(churn.EXAMPLES)}")
    if (folder / "loopml.toml").exists():
        raise LoopmlError(f"{folder / 'loopml.toml'} exists already; choose an empty folder")
    path = churn.init_project(folder, n_customers=customers, example=example)
    out.print(f"created {path}; next: cd {folder} && loopml run")


@app.command("run")
def run(config: ConfigOpt = None, profile: ProfileOpt = None,
        no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Stop after registering.")] = False,
        retrain: Annotated[str | None, typer.Option(
            "--retrain", metavar="REASON", help="Train even when the inputs are unchanged (the reason is kept "
            "with the run). Unchanged inputs give the same model: to judge it again, `loopml validate`.")] = None,
        ) -> None:
    """Run the pipeline flow once: ingest, features, train, validate, register, deploy.

    With the built-in serving backend, whose server would live in this process and stop when it
    exits, the run ends at the registry: `loopml serve NAME@production` serves what it says."""
    config = project_file(config)  # before a flow (and a temporary Prefect server) starts
    flows_importable()
    from flows.common import workspace as flow_workspace
    from flows.pipeline import pipeline
    from loopml.capabilities import InProcessServing

    config_arg = str(config) if config else None
    ws = flow_workspace(config_arg, profile)  # the workspace the flow's stages will use: opened once
    _ = ws.trainer, ws.gate_checks  # a module path or gate typo fails now, before any data is read
    in_process = ws.ability(ws.serving, InProcessServing) is not None
    with progress_bar(), tracebacks_only_when_debugging():
        result = pipeline(config=config_arg, profile=profile, deploy_model=not no_deploy and not in_process,
                          retrain=retrain)
    out.print(result)
    if in_process and not no_deploy and ws.config.pipeline is not None:
        name = ws.config.pipeline.model_name
        out.print(f"serve it: loopml serve {name}@production (the built-in server follows promotions and "
                  "rollbacks; a server started by this command would stop with it)")


@app.command("demo")
def demo(folder: Annotated[Path, typer.Option(help="Project folder (created if missing).")] = Path("loopml-demo"),
         customers: Annotated[int, typer.Option(help="Customers in the example data.")] = 4000,
         requests: Annotated[int, typer.Option(help="Requests per traffic phase.")] = 400,
         example: Annotated[str, typer.Option(help="churn, regression, multiclass or custom-model.")] = "churn",
         profile: ProfileOpt = None) -> None:
    """The whole loop on embedded defaults: train, serve, drift, retrain, promote. No servers to set up."""
    flows_importable()
    from flows.demo import demo as demo_flow
    from loopml.examples import churn

    if example not in churn.EXAMPLES:
        raise LoopmlError(f"unknown example {example!r}; choose one of: {', '.join(churn.EXAMPLES)}")
    with progress_bar(), tracebacks_only_when_debugging():
        summary = demo_flow(folder=str(folder), n_customers=customers, requests=requests, profile=profile,
                            example=example)
    table = Table(title=f"loopml demo in {summary.project}")
    table.add_column("step")
    table.add_column("outcome")
    for step, outcome in summary.steps:
        table.add_row(step, outcome)
    out.print(table)
    for path in summary.reports:
        out.print(f"report: {path}", soft_wrap=True)


@app.command("monitor")
def monitor(since_minutes: Annotated[float | None, typer.Option(
                help="Check the rows logged in the last N minutes (default: those logged since the previous "
                     "monitor run).")] = None,
            fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when drift is detected (cron, CI).")] = False,
            config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Check live inputs and outputs for drift against the training data (the loopml-monitor flow, once)."""
    config = project_file(config)
    flows_importable()
    from flows.monitor import monitor as monitor_flow

    since = time.time() - since_minutes * 60 if since_minutes is not None else None
    with progress_bar(), tracebacks_only_when_debugging():
        report, path = monitor_flow(since=since, config=str(config), profile=profile)
    if as_json:
        print_json({"drift": report.drift_detected, "reason": report.reason,
                    "drifted_features": list(report.drifted_features), "report": path})
    else:
        out.print(report.reason, soft_wrap=True, highlight=False)
        out.print(f"report: {path}", soft_wrap=True, highlight=False)
    if fail_on_drift and report.drift_detected:
        raise typer.Exit(1)


@app.command("config")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
                explain: Annotated[bool, typer.Option("--explain", help="Every setting with where it came from: "
                                                      "the file, the profile, an environment variable or the "
                                                      "default.")] = False) -> None:
    """Print the resolved configuration (backends and validated options, secrets masked)."""
    if explain:
        from rich.table import Table

        from loopml.config_loader import explain_config

        rows = explain_config(config, profile=profile)
        if as_json:
            print_json([{"key": k, "value": v, "from": source} for k, v, source in rows])
            return
        table = Table()
        table.add_column("key", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("from", no_wrap=True)
        for key, value, source in rows:
            table.add_row(key, json.dumps(value, default=str), source)
        out.print(table)
        return
    described = workspace(config, profile).describe()
    if as_json or not out.is_terminal:  # plain JSON for pipes: rich would wrap long strings
        print_json(described)
        return
    out.print_json(json.dumps(described, default=str))
