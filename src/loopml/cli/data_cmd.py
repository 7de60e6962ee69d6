"""`loopml data ingest|list|show`: content-addressed dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import (
    ConfigOpt,
    JsonOpt,
    ProfileOpt,
    data_app,
    out,
    print_json,
    workspace,
)


@data_app.command("ingest")
def data_ingest(
    source: Annotated[str, typer.Argument(help="A CSV/Parquet file, a directory or a glob.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Validate SOURCE against the dataset's schema and store it as a content-addressed version."""
    ws = workspace(config, profile)
    from loopml.stages.data import ingest

    where = source if "://" in source else str(Path(source).absolute())  # relative to where the user is
    with out.status(f"ingesting {source} …"):
        version, created = ingest(ws, name, where)
    if as_json:
        print_json({"version": version, "created": created})
        return
    verb = "stored new version" if created else "unchanged, existing version"
    out.print(f"{verb} [bold]{version.ref}[/] ({version.row_count} rows, "
              f"{len(version.columns)} columns)")


@data_app.command("list")
def data_list(name: Annotated[str | None, typer.Argument()] = None, config: ConfigOpt = None,
              profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """List datasets, or the versions of NAME (oldest first)."""
    ws = workspace(config, profile)
    versions = ws.datasets.versions(name) if name else list(ws.datasets.iter_all())
    if as_json:
        print_json(versions)
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
    version = workspace(config, profile).datasets.get(ref)
    if as_json:
        print_json(version)
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
