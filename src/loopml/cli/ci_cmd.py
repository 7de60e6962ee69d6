"""`loopml ci`: the gate for a CI runner (GitHub Actions, GitLab CI, Jenkins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.cli.common import ConfigOpt, JsonOpt, ProfileOpt, app, err, print_json, workspace


@app.command("ci")
def ci(config: ConfigOpt = None,
       profile: ProfileOpt = None,
       junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here: one test case per gate check.")] = None,
       summary: Annotated[Path | None, typer.Option(
           help="Append the markdown summary here (default: $GITHUB_STEP_SUMMARY when set, else "
                "REPORTS/summary.md).")] = None,
       reports: Annotated[Path, typer.Option(help="Folder for the reports to upload as artifacts.")] =
       Path("loopml-reports"),
       no_promote: Annotated[bool, typer.Option("--no-promote", help="Judge and record the candidate, never move "
                                                "an alias (pull requests).")] = False,
       as_json: JsonOpt = False) -> None:
    """Train or reuse, validate against the target environment's production model (--profile), record
    the verdict, promote unless --no-promote. No prompts, no colour; exit 0 approved, 1 rejected by a
    gate, 2 an error."""
    from loopml import ci as gate

    ws = workspace(config, profile)
    _ = ws.trainer, ws.gate_checks  # a module path or gate typo fails before any data is read
    result = gate.run(ws, promote=not no_promote, say=lambda line: err.print(line, soft_wrap=True, highlight=False,
                                                                               markup=False))
    written = gate.write_outputs(ws, result, junit=junit, summary=summary, reports=reports)
    if as_json:
        print_json({"model": result.model.ref, "status": result.model.status, "passed": result.report.passed,
                    "promoted": result.promoted, "awaiting_approval": result.awaiting_approval,
                    "failed_checks": [c.name for c in result.report.failed_checks], "baseline": result.baseline,
                    "files": written})
    else:
        verdict = "approved" if result.report.passed else "rejected: " + ", ".join(
            c.name for c in result.report.failed_checks)
        print(f"{result.model.ref} {verdict}; " + ", ".join(f"{k}: {v}" for k, v in written.items()))
    raise typer.Exit(result.exit_code)
