"""`loopml reports`: every stored report by model, version and kind, fetched by command."""

from __future__ import annotations

import json

import pytest
from loop_steps import loop_once

from loopml.cli import main
from loopml.examples import churn

pytestmark = pytest.mark.slow


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_reports_are_listed_by_version_and_kind_and_fetched_to_the_home(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    monkeypatch.chdir(folder)
    model = loop_once(config)
    code, said = run(capsys, "reports", "list", "--json")
    listed = json.loads(said)
    assert code == 0 and [(r["model"], r["kind"], r["version"]) for r in listed] == [("churn", "validation", 1)]
    assert listed[0]["key"] == model.lineage["validation_report"]
    code, said = run(capsys, "reports", "show", "churn:1", "--kind", "validation", "--json")
    shown = json.loads(said)
    assert code == 0 and shown["report"]["key"] == model.lineage["validation_report"]
    fetched = folder / ".loopml" / "reports" / shown["report"]["key"].rsplit("/", 1)[-1]
    assert shown["path"] == str(fetched) and "<html" in fetched.read_text().lower()
    fetched.unlink()  # a new machine: the copy comes from the store again
    code, said = run(capsys, "reports", "show", model.lineage["validation_report"])
    assert code == 0 and "validation report of churn v1" in said and fetched.is_file()
    code, said = run(capsys, "reports", "list", "churn:1", "--kind", "canary")
    assert code == 0 and "no reports of churn:1 of kind canary" in said
    code, said = run(capsys, "reports", "show", "churn:1", "--kind", "canary")
    assert code == 2 and "no canary report of churn:1" in said and "Traceback" not in said
    code, said = run(capsys, "reports", "list", "--kind", "fairness")
    assert code == 2 and "choose one of: validation, canary" in said
    # A Prefect artifact names no file:// path of the worker: the command that fetches the report.
    from loopml.context import Workspace
    from loopml.report_index import pointer_markdown, shareable_url

    ws = Workspace.open(config)
    key = model.lineage["validation_report"]
    assert shareable_url(ws, key) is None
    assert pointer_markdown(ws, key, "validation report") == (
        f"`loopml reports show {key}` (stored as `{key}`)")
