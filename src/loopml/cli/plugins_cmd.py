"""`loopml plugins list|check`: what is loaded, and whether the project's selection is valid."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    out,
    plugins_app,
    print_json,
    project_file,
)
from loopml.errors import LoopmlError


@plugins_app.command("list")
def plugins_list(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List loaded plugins, where they come from, their hooks and the backends they provide."""
    from loopml.config_loader import load_config
    from loopml.plugins import get_plugin_manager

    cfg = load_config(config)
    manager = get_plugin_manager(tuple(cfg.plugin_modules), load_plugins=cfg.load_plugins,
                                 disable_plugins=cfg.disable_plugins)
    infos = manager.plugins()
    if as_json:
        print_json({"plugins": infos, "problems": manager.problems, "disabled": sorted(manager.disabled)})
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
    from loopml.config_loader import defined_profiles, load_config
    from loopml.context import Workspace
    from loopml.plugins import build_plugin_manager

    file = project_file(config)
    profiles = [profile] if profile else [None, *defined_profiles(file)]
    environ = {k: v for k, v in os.environ.items() if k != "LOOPML_PROFILE"}  # each profile by name
    problems: list[str] = []
    described = None
    n = 0
    for name in profiles:
        label = "base config" if name is None else f"profile {name!r}"
        try:
            cfg = load_config(file, profile=name, environ=environ)
            manager = build_plugin_manager(tuple(cfg.plugin_modules), strict=True, load_plugins=cfg.load_plugins,
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
        print_json({"ok": True, "plugins": n, "checked": ["base" if p is None else p for p in profiles],
                     "configuration": described})
        return
    checked = ", ".join("base config" if p is None else f"profile {p!r}" for p in profiles)
    out.print(f"[green]ok[/]: {n} plugin(s) loaded, configuration valid ({checked})", soft_wrap=True)
    out.print_json(json.dumps(described, default=str))
