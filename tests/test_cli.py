"""The `loopml` command line, as a newcomer uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopml.backends.local_tracker import LocalTracker
from loopml.backends.sqlite_registry import SqliteRegistry
from loopml.cli import main
from loopml.records import RunInfo

CSV = "id,amount\n1,2.5\n2,3.5\n"


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.subprocess
def test_help_lists_every_command_group() -> None:
    result = subprocess.run([sys.executable, "-m", "loopml.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for group in ("plugins", "data", "models", "runs", "demo", "run", "init"):
        assert group in result.stdout


@pytest.mark.subprocess
def test_shell_completion_completes_commands_through_the_installed_entry_point(tmp_path: Path) -> None:
    loopml = Path(sys.executable).with_name("loopml")
    script = subprocess.run([str(loopml), "--show-completion", "bash"], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 0 and "_LOOPML_COMPLETE=complete_bash" in script.stdout
    for words, cword, expected in (("loopml mod", 1, "models"), ("loopml models ro", 2, "rollback"),
                                   ("loopml store ", 2, "gc")):
        env = {**os.environ, "_LOOPML_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        result = subprocess.run([str(loopml)], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0 and expected in result.stdout.split(), (words, result.stdout)


def test_plugins_list_json_names_the_builtin_backends(project: Path, capsys) -> None:
    code, out, _ = run(capsys, "plugins", "list", "--json")
    assert code == 0
    builtin = json.loads(out)["plugins"][0]
    assert builtin["name"] == "loopml"
    assert set(builtin["backends"]) >= {"artifact_store:local", "tracker:local", "registry:sqlite",
                                        "feature_store:local", "serving:builtin", "monitor:drift-log"}


def test_plugins_check_validates_the_project(project: Path, capsys) -> None:
    code, out, _ = run(capsys, "plugins", "check")
    assert code == 0 and "configuration valid" in out
    (project / "loopml.toml").write_text('[serving]\nbackend = "torchserv"\n')
    code, _, err = run(capsys, "plugins", "check")
    assert code == 2 and "unknown serving 'torchserv'" in err


def test_data_ingest_list_show(project: Path, capsys) -> None:
    (project / "d.csv").write_text(CSV)
    code, out, _ = run(capsys, "data", "ingest", "d.csv", "--name", "orders", "--json")
    assert code == 0
    ref = json.loads(out)["version"]["id"][:12]
    code, out, _ = run(capsys, "data", "ingest", "d.csv", "--name", "orders")
    assert "unchanged" in out and ref in out
    code, out, _ = run(capsys, "data", "list", "--json")
    assert [v["name"] for v in json.loads(out)] == ["orders"]
    code, out, _ = run(capsys, "data", "show", "orders")
    assert code == 0 and "amount" in out and "2 " in out


def test_bad_data_exits_2_with_a_message_naming_file_and_column(project: Path, capsys) -> None:
    (project / "loopml.toml").write_text('[datasets.orders.columns]\nid = { type = "int" }\n'
                                         'amount = { type = "float" }\n')
    (project / "bad.csv").write_text("id,amount\n1,lots\n")
    code, _, err = run(capsys, "data", "ingest", "bad.csv", "--name", "orders")
    assert code == 2
    assert "bad.csv" in err and "'amount'" in err and "lots" in err


def test_models_promote_rollback_and_history(project: Path, capsys) -> None:
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    for _ in range(2):
        registry.register("churn", artifact_key="models/x", artifact_sha256="c" * 64, actor="t",
                          dataset_version="orders@abc")
    assert run(capsys, "models", "promote", "churn:1", "--reason", "first")[0] == 0
    # Once the alias exists, a script must say which version it moves from: nothing changes without.
    code, _, err = run(capsys, "models", "promote", "churn:v2")
    assert code == 2 and "pass --expected 1" in err
    code, out, _ = run(capsys, "models", "promote", "churn:v2", "--expected", "1")
    assert code == 0 and "v1 -> v2" in out
    code, _, err = run(capsys, "models", "promote", "churn:1", "--expected", "1")
    assert code == 2 and "points at v2, not v1" in err  # stale compare-and-set refused
    code, _, err = run(capsys, "models", "rollback", "churn")
    assert code == 2 and "pass --expected 2" in err
    code, out, _ = run(capsys, "models", "rollback", "churn", "--expected", "2", "--reason", "latency")
    assert code == 0 and "v2 -> v1" in out
    code, _, err = run(capsys, "models", "rollback", "churn", "--expected", "2")
    assert code == 2 and "points at v1, not v2" in err  # a second rollback of v2 moves nothing
    code, out, _ = run(capsys, "models", "history", "churn", "--json")
    assert [e["action"] for e in json.loads(out)] == ["register", "register", "promote", "promote", "rollback"]
    code, out, _ = run(capsys, "models", "list", "--json")
    assert {v["version"]: v["aliases"] for v in json.loads(out)} == {1: ["production"], 2: []}
    code, out, _ = run(capsys, "models", "show", "churn@production", "--json")
    assert json.loads(out)["dataset_version"] == "orders@abc"
    code, _, err = run(capsys, "models", "show", "churn:9")
    assert code == 2 and "no version 9" in err
    # The CLI's moves reach the monitors and hooks like the flows' do (one event path).
    log = [json.loads(line) for line in (project / ".loopml" / "monitoring" / "events.jsonl").read_text().splitlines()]
    assert [(e["action"], e["to_version"]) for e in log if e["event"] == "promotion"] == [
        ("promote", 1), ("promote", 2), ("rollback", 1)]
    kinds = [e["kind"] for e in log if e["event"] == "event"]
    assert kinds == ["loopml.model.promoted", "loopml.model.promoted", "loopml.model.rolled-back"]
    assert all(e["project"] == "test" for e in log if e["event"] == "event")
    code, out, _ = run(capsys, "models", "canary", "churn", "--json")
    assert code == 0 and json.loads(out) == {"model": "churn", "active": False}


def test_runs_list_and_show(project: Path, capsys) -> None:
    tracker = LocalTracker(project / ".loopml" / "runs")
    tracker.start_run(RunInfo("r1", "churn", "train"))
    tracker.log_metrics("r1", {"auc": 0.8}, step=0)
    tracker.end_run("r1")
    code, out, _ = run(capsys, "runs", "list", "--json")
    assert [r["run_id"] for r in json.loads(out)] == ["r1"]
    code, out, _ = run(capsys, "runs", "show", "r1")
    assert code == 0 and "0.8" in out
    code, _, err = run(capsys, "runs", "show", "nope")
    assert code == 2 and "no run 'nope'" in err


@pytest.mark.parametrize(("args", "message"), [
    (["modles"], "No such command 'modles'"),
    (["models", "promote"], "Missing argument"),
    (["models", "list", "--bogus"], "No such option: --bogus"),
])
def test_usage_errors_say_what_is_wrong_without_a_traceback(args: list[str], message: str, capsys) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in out + err and "Usage: loopml" in err


def test_version_and_help_exit_0(capsys) -> None:
    from loopml import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"loopml {__version__}"
    code, out, _ = run(capsys, "models", "--help")
    assert code == 0 and "promote" in out


def test_outside_a_project_commands_say_so_and_create_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["models", "list"], ["run"], ["data", "list"]):
        code, _, err = run(capsys, *args)
        assert code == 2 and "no loopml.toml" in err and "loopml init" in err, (args, err)
    assert list(tmp_path.iterdir()) == []  # no .loopml/registry.db, no flow run


@pytest.mark.parametrize(("content", "message"), [
    (b'project = "caf\xe9"\n', "not UTF-8"),
    (b'home = "loopml.toml"\n', "is a file, not a folder"),
])
def test_a_broken_config_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, capsys, content: bytes,
                                                      message: str) -> None:
    (tmp_path / "loopml.toml").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "models", "list")
    assert code == 2 and message in err and "loopml.toml" in err and "Traceback" not in err, err


def test_store_gc_removes_unreferenced_blobs_and_dead_writers_temp_files(project: Path, capsys) -> None:
    from loopml.backends.local_store import LocalArtifactStore

    store = LocalArtifactStore(project / ".loopml" / "artifacts")
    store.put("keep/me", b"still referenced")
    store.put("drop/me", b"x" * 1_000_000)
    store.delete("drop/me")
    (store.root / "tmp" / ".part-killed").write_bytes(b"y" * 500_000)  # a writer killed mid-write
    code, out, _ = run(capsys, "store", "gc", "--json")
    assert code == 0 and json.loads(out) == {"expired_segments": 0, "expired_reports": 0, "blobs": 1,
                                             "temp_files": 1, "bytes_freed": 1_500_000}
    assert store.get("keep/me") == b"still referenced"
    code, out, _ = run(capsys, "store", "gc")
    assert code == 0 and "removed 0 unreferenced blobs and 0 temp files" in out


def _json_commands() -> set[str]:
    """Every CLI command that has a --json option, as 'group command'."""
    import typer.main

    from loopml.cli import app

    found: set[str] = set()

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        if any("--json" in getattr(p, "opts", ()) for p in getattr(command, "params", ())):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), ())
    return found


def test_every_json_option_prints_one_parseable_document_even_with_long_values(
        project: Path, capsys, monkeypatch) -> None:
    from loopml.context import Workspace
    from loopml.records import RunInfo

    monkeypatch.setenv("COLUMNS", "40")  # narrow: nothing may wrap inside a string
    (project / "loopml.toml").write_text('project = "test"\n[datasets.orders.columns]\nid = { type = "int" }\n'
                                         'note = { type = "string" }\n')
    (project / "o.csv").write_text("id,note\n1," + "a-long-value-" * 20 + "\n")
    ws = Workspace.open(project)
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    registry.register("churn", artifact_key="models/x", artifact_sha256="c" * 64, actor="t",
                      reason="a very long reason " * 10)
    tracker = ws.trackers[0]
    tracker.start_run(RunInfo("run-1", "churn", "a run with a long name " * 5))
    tracker.log_metrics("run-1", {"auc": 0.8}, step=0)
    tracker.end_run("run-1")
    commands = {
        "data ingest": ["data", "ingest", "o.csv", "--name", "orders"],
        "data list": ["data", "list"],
        "data show": ["data", "show", "orders@latest"],
        "models list": ["models", "list"],
        "models show": ["models", "show", "churn:1"],
        "models history": ["models", "history", "churn"],
        "models canary": ["models", "canary", "churn"],
        "runs list": ["runs", "list"],
        "runs show": ["runs", "show", "run-1"],
        "store gc": ["store", "gc"],
        "plugins list": ["plugins", "list"],
        "plugins check": ["plugins", "check"],
        "config": ["config"],
        "lineage": ["lineage", "churn:1"],
    }
    # these need a model trained from a real project; their --json output is checked there
    elsewhere = {"reproduce": "test_reproduce.py", "models evidence": "test_evidence.py",
                 "models verify-evidence": "test_evidence.py", "monitor": "test_monitor_command.py",
                 "validate": "test_rerun_rejected.py", "models request-promotion": "test_approvals.py",
                 "models approve": "test_approvals.py", "models reject": "test_approvals.py",
                 "models requests": "test_approvals.py", "reports list": "test_reports_command.py",
                 "reports show": "test_reports_command.py", "ci": "test_ci_command.py",
                 "render k8s": "test_gitops.py", "models copy": "test_environment_copy.py"}
    assert _json_commands() == set(commands) | set(elsewhere)  # a new --json command needs a line here
    for name, args in commands.items():
        code, out, err = run(capsys, *args, "--json")
        assert code == 0, (name, err)
        json.loads(out)  # one document, nothing around it


def test_help_shows_every_config_section_it_names(capsys, monkeypatch) -> None:
    """Rich reads ``[serving.options]`` as markup and drops it; every help text must show it."""
    import re

    import typer

    from loopml.cli.common import app

    monkeypatch.setenv("COLUMNS", "250")
    pending = [((), typer.main.get_command(app))]
    checked = 0
    while pending:
        path, command = pending.pop()
        for name, sub in getattr(command, "commands", {}).items():
            pending.append(((*path, name), sub))
        texts = [command.help or ""] + [getattr(p, "help", "") or "" for p in command.params]
        wanted = {m.replace("\\", "") for t in texts for m in re.findall(r"\\?\[[a-z_]+\.[a-z_.]+\]", t)}
        if not wanted or not path:
            continue
        code, out, _ = run(capsys, *path, "--help")
        assert code == 0
        flat = " ".join(out.split())
        for section in wanted:
            assert section in flat, (path, section)
            checked += 1
    assert checked >= 1  # serve names [serving.options] (host, port, token)


@pytest.mark.parametrize("columns", [80, 200])
def test_history_keeps_a_long_reason_readable_and_whole(project: Path, capsys, monkeypatch, columns) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    registry = SqliteRegistry(project / ".loopml" / "registry.db")
    path = "reports/churn/9b1f64668569f6f5/canary/v2-20261204T025111704824Z.html"
    reason = "rollback: p99 latency 41.2 ms above 30.0 ms; output shift KS 0.58 above 0.50; report " + path
    registry.register("churn", artifact_key="models/x", artifact_sha256="c" * 64, actor="loopml-canary",
                      reason=reason)
    code, out, _ = run(capsys, "models", "history", "churn")
    assert code == 0
    joined = "".join(line.strip(" │┃") for line in out.splitlines())
    assert path in joined  # wrapped if need be, never cut
    assert len(out.splitlines()) <= (4 if columns == 80 else 12)  # not a 30-line sliver


def test_prefect_workers_draining_at_exit_are_not_reported_but_their_failures_are(capsys) -> None:
    import logging

    main(["--version"])
    capsys.readouterr()
    worker = logging.getLogger("EventsWorker")
    kept = []
    handler = logging.Handler()
    handler.emit = kept.append
    worker.addHandler(handler)
    try:
        worker.warning("Still processing items: 1 items remaining...")
        worker.warning("Failed to send event")
    finally:
        worker.removeHandler(handler)
    assert [r.getMessage() for r in kept] == ["Failed to send event"]
