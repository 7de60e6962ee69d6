"""Audit commands over what the registry recorded: `loopml reproduce`, `loopml lineage`,
`loopml models evidence` and `loopml models verify-evidence`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loopml.cli.common import ConfigOpt, JsonOpt, ProfileOpt, app, err, models_app, out, print_json, workspace
from loopml.cli.models_cmd import _parse_model_ref
from loopml.errors import LoopmlError


@app.command("reproduce")
def reproduce(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME@ALIAS) to rebuild from its record.")],
    tolerance: Annotated[float, typer.Option(help="Largest prediction difference on the holdout that still "
                                                  "counts as reproduced when the bytes differ.")] = 1e-6,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Rebuild a registered model from its record alone (data versions, commit, config, seed) in a
    temporary git worktree, and say whether it is the same model. Exit 1 when it is not."""
    from loopml.reproduction import reproduce as rebuild

    ws = workspace(config, profile)
    name, version = _resolved(ws, ref)
    verdict = rebuild(ws, name, version, tolerance=tolerance)
    if as_json:
        print_json(verdict.to_dict())
    else:
        out.print(verdict.describe(), soft_wrap=True, highlight=False)
    if verdict.outcome == "different":
        raise typer.Exit(1)


def _print_model_lineage(lin) -> None:
    from rich.text import Text
    from rich.tree import Tree

    def _line(text: str, **style: str) -> Text:
        return Text(text, overflow="fold", **style)  # a narrow terminal wraps a line; it never cuts one

    tree = Tree(_line(f"{lin.ref} ({lin.status})" + (f", live as {', '.join(lin.aliases)}" if lin.aliases else ""),
                     style="bold"))
    data = tree.add(_line("data"))
    for d in lin.datasets:
        node = data.add(_line(f"{d.role}: {d.ref}, {d.rows:,} rows" + ("" if d.found else " (not in this store)")))
        for s in d.sources:
            node.add(_line(f"{s.path} sha256 {s.sha256[:12]} ({s.rows:,} rows)"))
    tree.add(_line(f"features: view {lin.feature_view} ({', '.join(lin.features)})"))
    tree.add(_line(f"training: run {lin.run_id}, fingerprint {str(lin.fingerprint)[:12]}, commit {lin.git_commit}"
                  + (" (uncommitted changes)" if lin.git_dirty else "")))
    gates = tree.add(_line(f"gates: report {lin.validation_report}"))
    for name, g in lin.gates.items():
        gates.add(_line(f"{name}: {'pass' if g.get('passed') else 'FAIL'}"))
    history = tree.add(_line("history"))
    for e in lin.history:
        where = f" @{e.alias}" if e.alias else ""
        history.add(_line(f"{e.at:%Y-%m-%d %H:%M} {e.action}{where} by {e.actor}: {e.reason}"))
    served = tree.add(_line("served"))
    for w in lin.served:
        until = w.until.strftime("%Y-%m-%d %H:%M") if w.until else "now"
        served.add(_line(f"@{w.alias} {w.since:%Y-%m-%d %H:%M} -> {until} (moved by {w.by})"))
    out.print(tree, highlight=False)


@app.command("validate")
def validate_version(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (or NAME@ALIAS) to judge again.")],
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Judge a registered version again against today's gates and production, on its own recorded
    data, without retraining; its status follows the new verdict. Exit 1 when it fails."""
    from loopml.stages.rejudge import rejudge

    ws = workspace(config, profile)
    name, version = _resolved(ws, ref)
    result = rejudge(ws, name, version)
    if as_json:
        print_json({"model": result.after.ref, "passed": result.report.passed, "status_before": result.before.status,
                    "status": result.after.status, "failed_checks": [c.name for c in result.report.failed_checks],
                    "report": result.report_key})
    else:
        out.print(result.describe(), soft_wrap=True, highlight=False)
    if not result.report.passed:
        raise typer.Exit(1)


@app.command("lineage")
def lineage(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS; with --impact a dataset version "
                                            "DATASET@ID.")],
    impact: Annotated[bool, typer.Option("--impact", help="Which model versions were built on this dataset "
                                                          "version, which are live, and what to do.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write the lineage as an HTML page with its graph.")] = None,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """What went into a model version, or (--impact) what a dataset version went into."""
    from loopml import lineage as lineage_mod
    from loopml import lineage_report

    ws = workspace(config, profile)
    if impact:
        result = lineage_mod.dataset_impact(ws, ref)
        page = lineage_report.impact_html(result)
        if as_json:
            print_json(result.to_dict())
        else:
            table = Table(title=f"built on {result.dataset.ref}")
            for column in ("model", "status", "used as", "aliases", "live"):
                table.add_column(column)
            for m in result.models:
                table.add_row(m.ref, m.status, m.role, ", ".join(m.aliases) or "-", "yes" if m.live else "no")
            out.print(table)
            for line in result.advice:
                out.print(line, soft_wrap=True, highlight=False)
    else:
        name, version, alias = _parse_model_ref(ref)
        if version is None:
            version = ws.registry.get(name, alias=alias).version  # NAME alone: the latest version
        result = lineage_mod.model_lineage(ws, name, version)
        page = lineage_report.lineage_html(result)
        if as_json:
            print_json(result.to_dict())
        else:
            _print_model_lineage(result)
    if html is not None:
        html.write_text(page, encoding="utf-8")
        if not as_json:
            out.print(f"written: {html}")


@models_app.command("evidence")
def evidence(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS.")],
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder for the bundle.")],
    sign_key: Annotated[Path | None, typer.Option(help="Ed25519 private key (PEM) that signs SHA256SUMS.")] = None,
    reproduce_model: Annotated[bool, typer.Option("--reproduce/--no-reproduce", help="Rebuild the model and "
                                                  "include the verdict (default: yes).")] = True,
    config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write an evidence bundle an auditor can read offline: card, gate report, data manifest, code,
    environment, history, lineage, reproduction verdict, and the sha256 of every file."""
    from loopml.evidence import write_bundle
    from loopml.reproduction import reproduce as rebuild

    ws = workspace(config, profile)
    name, version = _resolved(ws, ref)
    verdict = rebuild(ws, name, version) if reproduce_model else None
    files = write_bundle(ws, name, version, folder, reproduction=verdict, signing_key=sign_key)
    if as_json:
        print_json({"folder": str(folder), "files": files, "reproduction": verdict.outcome if verdict else None})
    else:
        out.print(f"evidence for {name}:v{version} in {folder}: {len(files)} files"
                  + (f"; reproduction: {verdict.outcome}" if verdict else ""), soft_wrap=True, highlight=False)


@models_app.command("verify-evidence")
def verify_evidence(
    folder: Annotated[Path, typer.Argument(help="A bundle written by `loopml models evidence`.")],
    public_key: Annotated[Path | None, typer.Option(help="Ed25519 public key (PEM) to check the signature.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a bundle against its SHA256SUMS (and its signature). Exit 1 naming what changed."""
    from loopml.evidence import verify

    result = verify(folder, public_key)
    if as_json:
        print_json(result.to_dict())
    else:
        for problem in result.problems:
            err.print(f"FAILED {problem}", soft_wrap=True, highlight=False)
        if result.ok:
            out.print(f"{folder}: {result.files} files match SHA256SUMS"
                      + ("; signature valid" if result.signature_checked else
                         "; signed (pass --public-key to check the signature)" if result.signed else "; not signed"))
    if not result.ok:
        raise typer.Exit(1)


def _resolved(ws, ref: str) -> tuple[str, int]:
    name, version, alias = _parse_model_ref(ref)
    if version is None:
        if alias is None:
            raise LoopmlError(f"say which version, e.g. {name}:3 or {name}@production")
        version = ws.registry.get(name, alias=alias).version
    return name, version
