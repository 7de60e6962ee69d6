"""Approvals end to end on the embedded registry: the loop stops at "awaiting approval", whoever
trained or requested a model cannot approve it, someone else's approval promotes it, and each step
is an event."""

from __future__ import annotations

import json

import pytest
from loop_steps import loop_once

from loopml.cli import main
from loopml.context import Workspace
from loopml.evidence import write_bundle
from loopml.examples import churn

pytestmark = pytest.mark.slow


def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, actor: str, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("LOOPML_ACTOR", actor)
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def events_of(folder) -> list[dict]:
    log = folder / ".loopml" / "monitoring" / "events.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_automated_promotion_stops_at_awaiting_approval_until_someone_else_approves(
        tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    config.write_text(config.read_text() + "\n[approvals]\nproduction = 1\n")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LOOPML_ACTOR", "ml-engineer")  # trains, and so requests, the promotion
    model = loop_once(config)
    ws = Workspace.open(config)
    assert model.status == "approved" and ws.registry.aliases("churn") == {}  # gates passed, nothing promoted
    code, said = cli(capsys, monkeypatch, "ml-engineer", "models", "requests", "--json")
    listed = json.loads(said)
    assert code == 0 and listed["policy"] == {"production": 1}
    [request] = listed["requests"]
    assert (request["version"], request["alias"], request["state"], request["requested_by"]) == \
        (model.version, "production", "pending", "ml-engineer")
    code, said = cli(capsys, monkeypatch, "ml-engineer", "models", "approve", str(request["id"]))
    assert code != 0 and "cannot also decide it" in said and ws.registry.aliases("churn") == {}
    code, said = cli(capsys, monkeypatch, "reviewer", "models", "approve", str(request["id"]), "-r",
                     "read the gate report", "--json")
    decided = json.loads(said)
    assert code == 0 and decided["request"]["state"] == "promoted" and decided["move"]["to_version"] == model.version
    assert ws.registry.aliases("churn") == {"production": model.version}
    trail = [(e.action, e.actor) for e in ws.registry.history("churn")]
    assert trail[-3:] == [("request", "ml-engineer"), ("approve", "reviewer"), ("promote", "reviewer")]
    kinds = [e["kind"] for e in events_of(folder) if e["event"] == "event"]
    assert kinds.index("loopml.model.promotion-requested") < kinds.index("loopml.model.promotion-decided") \
        < kinds.index("loopml.model.promoted")
    write_bundle(ws, "churn", model.version, tmp_path / "evidence", reproduction=None)
    bundled = json.loads((tmp_path / "evidence" / "approvals.json").read_text())
    assert bundled["policy"] == {"production": 1}
    [asked] = bundled["requests"]
    assert asked["state"] == "promoted" and [(d["actor"], d["decision"]) for d in asked["decisions"]] == \
        [("reviewer", "approve")]


def test_a_request_made_by_hand_can_be_rejected_and_listed(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LOOPML_ACTOR", "ml-engineer")
    first = loop_once(config)  # no policy yet: production moves
    config.write_text(config.read_text() + "\n[approvals]\nproduction = 1\n")
    code, said = cli(capsys, monkeypatch, "ml-engineer", "models", "promote", f"churn:{first.version}",
                     "--alias", "staging")
    assert code == 0  # staging is not governed
    code, said = cli(capsys, monkeypatch, "ml-engineer", "models", "promote", "churn:1", "--alias", "production",
                     "--expected", "1")
    assert code != 0 and "request-promotion" in said  # the policy was applied when the workspace opened
    code, said = cli(capsys, monkeypatch, "analyst", "models", "request-promotion", "churn:1", "--alias", "canary",
                     "--json")
    assert code == 0 and json.loads(said)["required"] == 1  # an ungoverned alias still takes a request
    code, said = cli(capsys, monkeypatch, "lead", "models", "reject", str(json.loads(said)["id"]), "--json")
    assert code == 0 and json.loads(said)["request"]["state"] == "rejected"
    code, said = cli(capsys, monkeypatch, "lead", "models", "requests", "--all")
    assert code == 0 and "rejected" in said and "production needs 1" in said
