"""`loopml reports list|show|open`: any stored report by model, version and kind, from any store."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import ConfigOpt, JsonOpt, ProfileOpt, out, print_json, reports_app, workspace

KindOpt = Annotated[str | None, typer.Option("--kind", "-k", help="validation, canary, drift, dataset-drift or "
                                             "performance.")]
RefArg = Annotated[str, typer.Argument(help="MODEL, MODEL:VERSION (the newest report of it) or a store key "
                                            "(reports/...).")]


@reports_app.command("list")
def reports_list(model: Annotated[str | None, typer.Argument(help="MODEL or MODEL:VERSION.")] = None,
                 kind: KindOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Every stored report, oldest first: what it judged, when, and its store key."""
    from loopml.cli.models_cmd import _parse_model_ref
    from loopml.report_index import stored_reports

    name, version, _ = _parse_model_ref(model) if model else (None, None, None)
    found = stored_reports(workspace(config, profile), name, kind=kind, version=version)
    if as_json:
        print_json(found)
        return
    if not found:
        out.print("no reports" + (f" of {model}" if model else "") + (f" of kind {kind}" if kind else ""))
        return
    table = Table()
    for col in ("model", "version", "kind", "written", "key"):
        table.add_column(col, overflow="fold")
    for r in found:
        table.add_row(r.model, f"v{r.version}" if r.version is not None else "-", r.kind,
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.key)
    out.print(table)


def _fetched(ref: str, kind: str | None, config: ConfigOpt, profile: ProfileOpt) -> tuple[object, object, str | None]:
    from loopml.report_index import copy_out, find_report, shareable_url

    ws = workspace(config, profile)
    report = find_report(ws, ref, kind=kind)
    return report, copy_out(ws, report), shareable_url(ws, report.key)


@reports_app.command("show")
def reports_show(ref: RefArg, kind: KindOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Fetch a report from the store to .loopml/reports/ and print where it is (and a link a browser
    elsewhere opens, when the store makes one)."""
    report, path, url = _fetched(ref, kind, config, profile)
    if as_json:
        print_json({"report": report, "path": str(path), "url": url})
        return
    out.print(f"{report.kind} report of {report.model}"  # type: ignore[attr-defined]
              + (f" v{report.version}" if report.version is not None else "")  # type: ignore[attr-defined]
              + f": {path}" + (f"\nlink: {url}" if url else ""), soft_wrap=True, highlight=False)


@reports_app.command("open")
def reports_open(ref: RefArg, kind: KindOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Fetch a report and open it in the browser (prints its path where there is none)."""
    _report, path, _url = _fetched(ref, kind, config, profile)
    opened = webbrowser.open(path.as_uri())  # type: ignore[attr-defined]
    out.print(f"{'opened' if opened else 'no browser here; open'} {path}", soft_wrap=True, highlight=False)
