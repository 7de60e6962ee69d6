"""The ``loopml`` command line. Every error prints one clear message and exits non-zero."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loopml.errors import LoopmlError

app = typer.Typer(no_args_is_help=True, add_completion=True,
                  help="loopml: version data, train, validate, register, serve and monitor models.")
plugins_app = typer.Typer(no_args_is_help=True, help="Inspect and check installed plugins.")
data_app = typer.Typer(no_args_is_help=True, help="Ingest and inspect dataset versions.")
models_app = typer.Typer(no_args_is_help=True, help="Registered models: list, show, promote, roll back.")
runs_app = typer.Typer(no_args_is_help=True, help="Tracked training runs.")
store_app = typer.Typer(no_args_is_help=True, help="The artifact store: maintenance.")
app.add_typer(plugins_app, name="plugins")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(store_app, name="store")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Path to loopml.toml "
                      "(default: ./loopml.toml or a parent's, or $LOOPML_CONFIG).")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="Config profile "
                       "(default: $LOOPML_PROFILE).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_version(value: bool) -> None:
    if value:
        from loopml import __version__

        out.print(f"loopml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print loopml's version and exit.")] = False) -> None:
    """loopml: version data, train, validate, register, serve and monitor models."""


def _project_file(config: Path | None) -> Path:
    """The loopml.toml a command works on; outside a project, say so instead of creating state here."""
    from loopml.config import find_config_file

    found = config if config is not None else find_config_file()
    if found is None:
        raise LoopmlError(f"no loopml.toml in {Path.cwd()} or its parents: run this inside a project, pass "
                          "--config PATH, or create one with `loopml init`")
    return found


def _workspace(config: Path | None, profile: str | None):
    from loopml.context import Workspace

    return Workspace.open(_project_file(config), profile=profile)


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------- plugins
@plugins_app.command("list")
def plugins_list(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List loaded plugins, where they come from, their hooks and the backends they provide."""
    from loopml.config import load_config
    from loopml.plugins import get_plugin_manager

    cfg = load_config(config)
    manager = get_plugin_manager(tuple(cfg.plugins), load_plugins=cfg.load_plugins,
                                 disable_plugins=cfg.disable_plugins)
    infos = manager.plugins()
    if as_json:
        _print_json({"plugins": infos, "problems": manager.problems, "disabled": sorted(manager.disabled)})
        return
    table = Table(title="loopml plugins")
    for col in ("plugin", "source", "distribution", "backends", "hooks"):
        table.add_column(col)
    for p in infos:
        dist = f"{p.distribution} {p.version}" if p.distribution else "-"
        table.add_row(p.name, p.source, dist, "\n".join(p.backends) or "-",
                      "\n".join(h for h in p.hooks if not h.endswith("s")) or "-")
    out.print(table)
    if manager.disabled:
        out.print(f"disabled ({', '.join(manager.selection.sources)}): {', '.join(sorted(manager.disabled))}",
                  soft_wrap=True)
    for problem in manager.problems:
        err.print(f"[yellow]warning:[/] {problem.error}", soft_wrap=True)


@plugins_app.command("check")
def plugins_check(config: ConfigOpt = None, profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Check only this profile (default: the base config and every profile).")] = None,
        as_json: JsonOpt = False) -> None:
    """Load every plugin strictly and validate the project's backend selection and options, in the
    base configuration and in every profile (a typo in a profile you deploy later fails now)."""
    import importlib.util

    from loopml.config import defined_profiles, load_config
    from loopml.context import Workspace
    from loopml.plugins import build_plugin_manager

    file = _project_file(config)
    profiles = [profile] if profile else [None, *defined_profiles(file)]
    environ = {k: v for k, v in os.environ.items() if k != "LOOPML_PROFILE"}  # each profile by name
    problems: list[str] = []
    described = None
    n = 0
    for name in profiles:
        label = "base config" if name is None else f"profile {name!r}"
        try:
            cfg = load_config(file, profile=name, environ=environ)
            manager = build_plugin_manager(tuple(cfg.plugins), strict=True, load_plugins=cfg.load_plugins,
                                           disable_plugins=cfg.disable_plugins)
            manager.catalogue()
            ws = Workspace(cfg, manager)
            missing = []
            for selected in ws.selected.values():
                for s in selected if isinstance(selected, list) else [selected] if selected else []:
                    missing += [f"{s.config_key}: backend {s.spec.name!r} needs module {mod!r}"
                                for mod in s.spec.requires if importlib.util.find_spec(mod) is None]
            if missing:
                raise LoopmlError("missing packages:\n  " + "\n  ".join(missing))
            if ws.selected.get("trainer") is not None:
                ws.trainer  # noqa: B018 - imports a torch-module factory now: a bad path fails here, not mid-run
            n = max(n, len(manager.plugins()))
            described = described or ws.describe()
        except LoopmlError as exc:
            problems.append(f"{label}: {exc}")
    if problems:
        raise LoopmlError("\n".join(problems))
    if as_json:
        _print_json({"ok": True, "plugins": n, "checked": ["base" if p is None else p for p in profiles],
                     "configuration": described})
        return
    checked = ", ".join("base config" if p is None else f"profile {p!r}" for p in profiles)
    out.print(f"[green]ok[/]: {n} plugin(s) loaded, configuration valid ({checked})", soft_wrap=True)
    out.print_json(json.dumps(described, default=str))


# ---------------------------------------------------------------------------- data
@data_app.command("ingest")
def data_ingest(
    source: Annotated[str, typer.Argument(help="A CSV/Parquet file, a directory or a glob.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Validate SOURCE against the dataset's schema and store it as a content-addressed version."""
    ws = _workspace(config, profile)
    from loopml.stages.data import ingest

    where = source if "://" in source else str(Path(source).absolute())  # relative to where the user is
    with out.status(f"ingesting {source} …"):
        version, created = ingest(ws, name, where)
    if as_json:
        _print_json({"version": version, "created": created})
        return
    verb = "stored new version" if created else "unchanged, existing version"
    out.print(f"{verb} [bold]{version.ref}[/] ({version.row_count} rows, "
              f"{len(version.columns)} columns)")


@data_app.command("list")
def data_list(name: Annotated[str | None, typer.Argument()] = None, config: ConfigOpt = None,
              profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List datasets, or the versions of NAME (oldest first)."""
    ws = _workspace(config, profile)
    versions = ws.datasets.versions(name) if name else list(ws.datasets.iter_all())
    if as_json:
        _print_json(versions)
        return
    table = Table()
    for col in ("dataset", "version", "rows", "columns", "created"):
        table.add_column(col)
    for v in versions:
        table.add_row(v.name, v.short_id, str(v.row_count), str(len(v.columns)),
                      v.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


@data_app.command("show")
def data_show(ref: Annotated[str, typer.Argument(help="NAME, NAME@latest or NAME@<id prefix>.")],
              config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Show one dataset version: schema, row count, profile and source files."""
    version = _workspace(config, profile).datasets.get(ref)
    if as_json:
        _print_json(version)
        return
    out.print(f"[bold]{version.ref}[/]  id {version.id}\nrows {version.row_count}, created "
              f"{version.created_at.isoformat()}")
    table = Table()
    for col in ("column", "type", "nullable", "nulls", "summary"):
        table.add_column(col)
    for c in version.columns:
        prof = dict(version.profile.get(c.name, {}))
        nulls = prof.pop("nulls", 0)
        prof.pop("type", None)
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in prof.items())
        table.add_row(c.name, c.type, str(c.nullable), str(nulls), summary[:80])
    out.print(table)
    for f in version.source.get("files", []):
        out.print(f"source {f['path']} ({f['rows']} rows, sha256 {f['sha256'][:12]})")


# ---------------------------------------------------------------------------- models
@models_app.command("list")
def models_list(name: Annotated[str | None, typer.Argument()] = None, config: ConfigOpt = None,
                profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List registered model versions with their status and aliases."""
    ws = _workspace(config, profile)
    versions = ws.registry.list_versions(name)
    aliases: dict[tuple[str, int], list[str]] = {}
    for model in {v.name for v in versions}:
        for alias, ver in ws.registry.aliases(model).items():
            aliases.setdefault((model, ver), []).append(alias)
    if as_json:
        _print_json([{**_jsonable(v), "aliases": aliases.get((v.name, v.version), [])}
                     for v in versions])
        return
    table = Table()
    for col in ("model", "version", "status", "aliases", "dataset", "created"):
        table.add_column(col)
    for v in versions:
        table.add_row(v.name, str(v.version), v.status, ", ".join(aliases.get((v.name, v.version), [])),
                      v.dataset_version or "-", v.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


def _parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``name``, ``name:3`` / ``name:v3`` or ``name@alias``."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, None, alias
    if ":" in ref:
        name, ver = ref.split(":", 1)
        try:
            return name, int(ver.lstrip("v")), None
        except ValueError:
            raise LoopmlError(f"model reference {ref!r}: version must be a number, e.g. {name}:3") from None
    return ref, None, None


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
                config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Show one model version with its full lineage."""
    name, version, alias = _parse_model_ref(ref)
    model = _workspace(config, profile).registry.get(name, version, alias=alias)
    if as_json:
        _print_json(model)
        return
    out.print_json(json.dumps(_jsonable(model), default=str))


def _alias_now(ws: Any, name: str, alias: str) -> int | None:
    from loopml.errors import ModelNotFoundError

    try:
        return ws.registry.get(name, alias=alias).version
    except ModelNotFoundError:
        return None


def _confirmed_expected(name: str, alias: str, current: int, move: str) -> int:
    """Without --expected, a move is made only against a version the operator has seen: asked on a
    terminal, refused in a script (so two scripts never both win in turn)."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        typer.confirm(f"{name}@{alias} points at v{current}. {move.capitalize()}?", abort=True)
        return current
    raise LoopmlError(f"{name}@{alias} points at v{current}: pass --expected {current} to {move}; "
                      "the move is refused if someone changes the alias first")


ExpectedOpt = Annotated[int | None, typer.Option(
    help="Version ALIAS must point at now (compare-and-set). Required in scripts once the alias "
         "exists; on a terminal you are asked instead.")]


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to promote.")],
    alias: Annotated[str, typer.Option("--alias", "-a")] = "production",
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (kept in history).")] = "manual promotion",
    expected: ExpectedOpt = None,
    config: ConfigOpt = None, profile: ProfileOpt = None,
) -> None:
    """Move ALIAS to a version, atomically (compare-and-set against --expected)."""
    from loopml import events
    from loopml.context import current_actor

    name, version, _ = _parse_model_ref(ref)
    if version is None:
        raise LoopmlError(f"say which version to promote, e.g. {name}:3")
    ws = _workspace(config, profile)
    if expected is None:
        current = _alias_now(ws, name, alias)
        if current is not None:  # a new alias needs no --expected: only one creator can win
            expected = _confirmed_expected(name, alias, current, f"move it to v{version}")
    event = ws.registry.set_alias(name, alias, version, expected=expected, actor=current_actor(),
                                  reason=reason)
    events.announce(ws, events.promotion_event(ws, event), subject=event)
    out.print(f"{name}@{alias}: v{event.from_version or '-'} -> v{event.to_version}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument()],
    alias: Annotated[str, typer.Option("--alias", "-a")] = "production",
    reason: Annotated[str, typer.Option("--reason", "-r")] = "manual rollback",
    expected: Annotated[int | None, typer.Option(
        help="The version being rolled back: ALIAS must point at it now. Required in scripts; "
             "on a terminal you are asked instead. Two rollbacks of one version move the alias once.")] = None,
    config: ConfigOpt = None, profile: ProfileOpt = None,
) -> None:
    """Point ALIAS back at the version it held before."""
    from loopml import events
    from loopml.context import current_actor

    ws = _workspace(config, profile)
    if expected is None:
        current = _alias_now(ws, name, alias)
        if current is not None:  # else the registry says there is nothing to roll back
            expected = _confirmed_expected(name, alias, current, "roll it back")
    event = ws.registry.rollback(name, alias, expected=expected, actor=current_actor(), reason=reason)
    events.announce(ws, events.promotion_event(ws, event), subject=event)
    out.print(f"{name}@{alias}: v{event.from_version} -> v{event.to_version} (rollback)")


@models_app.command("canary")
def models_canary(
    name: Annotated[str, typer.Argument()],
    watch: Annotated[bool, typer.Option("--watch", help="Judge until decided, then promote or roll back.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between judgements with --watch.")] = 5.0,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Judge the active canary (alias canary != production) on the served traffic so far."""
    from loopml import canary

    ws = _workspace(config, profile)
    if watch:
        verdict = canary.watch(ws, name, poll_seconds=poll,
                               on_wait=lambda v: out.print(f"waiting: {v.reason}") if not as_json else None)
    else:
        verdict = canary.judge_active(ws, name)
    if verdict is None:
        if as_json:
            _print_json({"model": name, "active": False})
        else:
            out.print(f"{name} has no active canary (aliases: {ws.registry.aliases(name)})")
        return
    if as_json:
        _print_json({**verdict.payload(), "model": name, "reason": verdict.reason})
        return
    out.print(f"{name} v{verdict.candidate} ({verdict.mode}) vs production v{verdict.production}: "
              f"[bold]{verdict.decision}[/bold]: {verdict.reason}")


@models_app.command("history")
def models_history(name: Annotated[str, typer.Argument()], config: ConfigOpt = None,
                   profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """The append-only history of a model: registrations, promotions, rollbacks."""
    entries = _workspace(config, profile).registry.history(name)
    if as_json:
        _print_json(entries)
        return
    table = Table()
    for col in ("#", "when", "action", "alias", "from", "to", "who", "why"):
        table.add_column(col)
    for e in entries:
        table.add_row(str(e.id), e.at.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.alias or "-",
                      str(e.from_version or "-"), str(e.to_version or "-"), e.actor, e.reason)
    out.print(table)


# ---------------------------------------------------------------------------- runs
def _queryable_tracker(ws):
    for tracker in ws.trackers:
        if hasattr(tracker, "get_run") and hasattr(tracker, "list_runs"):
            return tracker
    raise LoopmlError("no configured tracker can be queried; enable the local tracker: "
                      "[trackers.local] in loopml.toml")


@runs_app.command("list")
def runs_list(experiment: Annotated[str | None, typer.Option("--experiment", "-e")] = None,
              config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List tracked runs, newest first."""
    runs = _queryable_tracker(_workspace(config, profile)).list_runs(experiment)
    if as_json:
        _print_json(runs)
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
    run = _queryable_tracker(_workspace(config, profile)).get_run(run_id)
    if as_json:
        _print_json(run)
        return
    out.print(f"[bold]{run.run_id}[/] {run.experiment}/{run.name} {run.status}")
    out.print_json(json.dumps({"params": run.params, "tags": run.tags,
                               "latest_metrics": run.latest_metrics(),
                               "artifacts": run.artifacts}))


@store_app.command("gc")
def store_gc(config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Remove blobs no key refers to and temp files of killed writers (safe while writers run)."""
    ws = _workspace(config, profile)
    gc = getattr(ws.store, "gc", None)
    if not callable(gc):
        raise LoopmlError(f"the artifact store {ws.store.uri} has no gc; expire its unreferenced "
                          "objects with the service's own lifecycle rules")
    result = gc()
    if as_json:
        _print_json(result)
        return
    out.print(f"{ws.store.uri}: removed {result.blobs} unreferenced blobs and {result.temp_files} "
              f"temp files, {result.bytes_freed / 1e6:.1f} MB freed", soft_wrap=True)


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


def _flows_importable() -> None:
    try:
        import flows  # noqa: F401
    except ImportError:
        raise LoopmlError("the flows package is not importable; install loopml with its "
                          "'loop' extra from a source checkout (make install)") from None


@app.command("run")
def run(config: ConfigOpt = None, profile: ProfileOpt = None,
        no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Stop after registering.")] = False) -> None:
    """Run the pipeline flow once: ingest, features, train, validate, register, deploy."""
    config = _project_file(config)  # before a flow (and a temporary Prefect server) starts
    _flows_importable()
    from flows.pipeline import pipeline

    with _progress_bar():
        result = pipeline(config=str(config) if config else None, profile=profile,
                          deploy_model=not no_deploy)
    out.print(result)


@contextlib.contextmanager
def _progress_bar() -> Iterator[None]:
    """A rich progress bar for long steps (training epochs), fed by ``loopml.progress``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from loopml import progress

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


@app.command("demo")
def demo(folder: Annotated[Path, typer.Option(help="Project folder (created if missing).")] = Path("loopml-demo"),
         customers: Annotated[int, typer.Option(help="Customers in the example data.")] = 4000,
         requests: Annotated[int, typer.Option(help="Requests per traffic phase.")] = 400,
         example: Annotated[str, typer.Option(help="churn, regression, multiclass or custom-model.")] = "churn",
         profile: ProfileOpt = None) -> None:
    """The whole loop on embedded defaults: train, serve, drift, retrain, promote. No servers to set up."""
    _flows_importable()
    from flows.demo import demo as demo_flow
    from loopml.examples import churn

    if example not in churn.EXAMPLES:
        raise LoopmlError(f"unknown example {example!r}; choose one of: {', '.join(churn.EXAMPLES)}")
    with _progress_bar():
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


@app.command("serve")
def serve(target: Annotated[str, typer.Argument(help="NAME@ALIAS to serve, e.g. churn@production.")],
          host: Annotated[str | None, typer.Option(help="Bind address (default [serving.options] host, "
                                                        "127.0.0.1).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (default [serving.options] port; 0: free).")] = None,
          canary_weight: Annotated[float | None, typer.Option(help="Share for the version under alias "
                                                                   "'canary'.")] = None,
          poll_seconds: Annotated[float | None, typer.Option(help="How often to read the registry.")] = None,
          config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Serve a model alias until stopped, following promotions and rollbacks (POST /predict, OIP v2, /metrics).

    The token clients must send comes from [serving.options] token or $LOOPML_SERVE_TOKEN."""
    import logging

    from loopml.serving import follower

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    follower.serve(_workspace(config, profile), target, host=host, port=port, canary_weight=canary_weight,
                  poll_seconds=poll_seconds)


@app.command("config")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Print the resolved configuration (backends and validated options, secrets masked)."""
    described = _workspace(config, profile).describe()
    if as_json or not out.is_terminal:  # plain JSON for pipes: rich would wrap long strings
        _print_json(described)
        return
    out.print_json(json.dumps(described, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning loopml errors into one red line and exit code 2."""
    # Ad hoc flow runs start a temporary Prefect server; its 20 s default start-up budget is too
    # tight for a fresh database on a busy small machine. An explicit setting still wins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        app(args=argv, standalone_mode=False, prog_name="loopml")
    except LoopmlError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except typer.Exit as exc:  # --version, --help
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.TyperException as exc:  # usage errors: typer bundles its own click, so not click's classes
        show = getattr(exc, "show", None)
        if callable(show):
            show(file=sys.stderr)
        else:
            err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return int(getattr(exc, "exit_code", 2) or 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
