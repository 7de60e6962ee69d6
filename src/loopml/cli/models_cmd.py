"""`loopml models list|show|promote|rollback|canary|history`: the registry."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from loopml.cli.common import (
    ConfigOpt,
    JsonOpt,
    ProfileOpt,
    jsonable,
    models_app,
    out,
    print_json,
    workspace,
)
from loopml.errors import LoopmlError, ModelNotFoundError


@models_app.command("list")
def models_list(name: Annotated[str | None, typer.Argument()] = None, config: ConfigOpt = None,
                profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List registered model versions with their status and aliases."""
    ws = workspace(config, profile)
    versions = ws.registry.list_versions(name)
    aliases: dict[tuple[str, int], list[str]] = {}
    for model in {v.name for v in versions}:
        for alias, ver in ws.registry.aliases(model).items():
            aliases.setdefault((model, ver), []).append(alias)
    if as_json:
        print_json([{**jsonable(v), "aliases": aliases.get((v.name, v.version), [])}
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
    model = workspace(config, profile).registry.get(name, version, alias=alias)
    if as_json:
        print_json(model)
        return
    out.print_json(json.dumps(jsonable(model), default=str))


def _alias_now(ws: Any, name: str, alias: str) -> int | None:
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
    ws = workspace(config, profile)
    if expected is None:
        current = _alias_now(ws, name, alias)
        if current is not None:  # a new alias needs no --expected: only one creator can win
            expected = _confirmed_expected(name, alias, current, f"move it to v{version}")
    event = ws.registry.set_alias(name, alias, version, expected=expected, actor=current_actor(),
                                  reason=reason)
    events.announce_move(ws, event)
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

    ws = workspace(config, profile)
    if expected is None:
        current = _alias_now(ws, name, alias)
        if current is not None:  # else the registry says there is nothing to roll back
            expected = _confirmed_expected(name, alias, current, "roll it back")
    event = ws.registry.rollback(name, alias, expected=expected, actor=current_actor(), reason=reason)
    events.announce_move(ws, event)
    cleared = "".join(f"; {c.alias} v{c.from_version} removed" for c in event.cleared)
    out.print(f"{name}@{alias}: v{event.from_version} -> v{event.to_version} (rollback{cleared})")


@models_app.command("canary")
def models_canary(
    name: Annotated[str, typer.Argument()],
    watch: Annotated[bool, typer.Option("--watch", help="Judge until decided, then promote or roll back.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between judgements with --watch.")] = 5.0,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Judge the active canary (alias canary != production) on the served traffic so far."""
    from loopml import canary

    ws = workspace(config, profile)
    if watch:
        verdict = canary.watch(ws, name, poll_seconds=poll,
                               on_wait=lambda v: out.print(f"waiting: {v.reason}") if not as_json else None)
    else:
        verdict = canary.judge_active(ws, name)
    if verdict is None:
        if as_json:
            print_json({"model": name, "active": False})
        else:
            out.print(f"{name} has no active canary (aliases: {ws.registry.aliases(name)})")
        return
    if as_json:
        print_json({**verdict.payload(), "model": name, "reason": verdict.reason})
        return
    out.print(f"{name} v{verdict.candidate} ({verdict.mode}) vs production v{verdict.production}: "
              f"[bold]{verdict.decision}[/bold]: {verdict.reason}")


@models_app.command("history")
def models_history(name: Annotated[str, typer.Argument()], config: ConfigOpt = None,
                   profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """The append-only history of a model: registrations, promotions, rollbacks."""
    entries = workspace(config, profile).registry.history(name)
    if as_json:
        print_json(entries)
        return
    if out.width < 120:  # a table squeezes "why" into a sliver: one block per entry, the reason at full width
        from rich.text import Text

        for e in entries:
            move = f" @{e.alias} v{e.from_version or '-'} -> v{e.to_version or '-'}" if e.alias else ""
            out.print(Text(f"#{e.id} {e.at:%Y-%m-%d %H:%M:%S} {e.action}{move} by {e.actor}", style="bold"))
            out.print(Text(f"  {e.reason}", overflow="fold"))
        return
    table = Table()
    for col in ("#", "when", "action", "alias", "from", "to", "who"):
        table.add_column(col, no_wrap=True)
    table.add_column("why", overflow="fold")  # a report path is wrapped, never cut
    for e in entries:
        table.add_row(str(e.id), e.at.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.alias or "-",
                      str(e.from_version or "-"), str(e.to_version or "-"), e.actor, e.reason)
    out.print(table)
