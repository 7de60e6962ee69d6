"""What every command shares: the Typer apps, the consoles, the options and the helpers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from loopml import __version__, progress
from loopml.errors import LoopmlError

app = typer.Typer(no_args_is_help=True, add_completion=True,
                  help="loopml: version data, train, validate, register, serve and monitor models.")
plugins_app = typer.Typer(no_args_is_help=True, help="Inspect and check installed plugins.")
data_app = typer.Typer(no_args_is_help=True, help="Ingest and inspect dataset versions.")
models_app = typer.Typer(no_args_is_help=True, help="Registered models: list, show, promote, roll back.")
runs_app = typer.Typer(no_args_is_help=True, help="Tracked training runs.")
store_app = typer.Typer(no_args_is_help=True, help="The artifact store: maintenance.")
registry_app = typer.Typer(no_args_is_help=True, help="The registry's database: schema status and upgrade.")
reports_app = typer.Typer(no_args_is_help=True, help="Stored reports (validation, canary, drift, performance): "
                          "list, show, open.")
app.add_typer(plugins_app, name="plugins")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(store_app, name="store")
app.add_typer(registry_app, name="registry")
app.add_typer(reports_app, name="reports")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Path to loopml.toml "
                      "(default: ./loopml.toml or a parent's, or $LOOPML_CONFIG).")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Config profile "
                       "(default: $LOOPML_PROFILE).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"loopml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print loopml's version and exit.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also LOOPML_DEBUG=1); "
                                              "errors are otherwise one line.")] = False) -> None:
    """loopml: version data, train, validate, register, serve and monitor models."""
    if debug:
        os.environ["LOOPML_DEBUG"] = "1"


def project_file(config: Path | None) -> Path:
    """The loopml.toml a command works on; outside a project, say so instead of creating state here."""
    from loopml.config_loader import find_config_file

    found = config if config is not None else find_config_file()
    if found is None:
        raise LoopmlError(f"no loopml.toml in {Path.cwd()} or its parents: run this inside a project, pass "
                          "--config PATH, or create one with `loopml init`")
    return found


def workspace(config: Path | None, profile: str | None):
    from loopml.context import Workspace

    return Workspace.open(project_file(config), profile=profile)


def jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(obj), indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def progress_bar() -> Iterator[None]:
    """A rich progress bar for long steps (training epochs), fed by ``loopml.progress``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[metrics]}"), console=err, transient=False)
    tasks: dict[str, Any] = {}

    def sink(stage: str, done: int, total: int, metrics: dict[str, float]) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, metrics="")
        text = "  ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:3])
        bar.update(tasks[stage], completed=done, total=total, metrics=text)

    previous = progress.set_sink(sink)
    with bar:
        try:
            yield
        finally:
            progress.set_sink(previous)


def flows_importable() -> None:
    try:
        import flows  # noqa: F401
    except ImportError:
        raise LoopmlError("the flows package is not importable; install loopml with its "
                          "'loop' extra from a source checkout (make install)") from None


def debugging() -> bool:
    """``loopml --debug …`` or ``LOOPML_DEBUG=1``: show tracebacks."""
    return os.environ.get("LOOPML_DEBUG", "") not in ("", "0")


class _WithoutUserTracebacks(logging.Formatter):
    """The console's formatter, minus the traceback of a loopml error (bad config, bad data): the
    CLI ends with that error in one line, and Prefect's own log (the API) keeps the traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, LoopmlError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


@contextlib.contextmanager
def tracebacks_only_when_debugging() -> Iterator[None]:
    """Flows run from the CLI log a failed stage's traceback to the console; for a loopml error that
    is ~35 lines before the one that matters. Off with ``--debug``."""
    if debugging():
        yield
        return
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    if not PROCESS_LOGGING_CONFIG:  # Prefect configures its handlers once; later calls only adjust levels
        setup_logging()
    wrapped = [(h, h.formatter) for h in logging.getLogger().handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h.formatter, _WithoutUserTracebacks)]
    for handler, formatter in wrapped:
        handler.setFormatter(_WithoutUserTracebacks(formatter))
    try:
        yield
    finally:
        for handler, formatter in wrapped:
            handler.setFormatter(formatter)


class _DrainNoise(logging.Filter):
    """Prefect's event and log workers say "Still processing items: 1 items remaining..." while a
    command exits and they deliver what is queued: nothing is wrong and nothing is lost, so the
    user is not told (their failures still are)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Still processing items")


def quiet_prefect_drain() -> None:
    for name in ("EventsWorker", "APILogWorker"):
        worker_log = logging.getLogger(name)
        if not any(isinstance(f, _DrainNoise) for f in worker_log.filters):
            worker_log.addFilter(_DrainNoise())

