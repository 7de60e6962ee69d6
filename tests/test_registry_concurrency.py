"""Many processes promoting and rolling back at once: one winner per decision, never a lost update.

The processes meet at file barriers (all read, then all write), so every round really is a race,
whatever the machine's load; nothing here depends on a time window.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from race import BARRIER, race_promoters

from loopml.backends.sqlite_registry import SqliteRegistry

OBSERVER = r"""
import os, sqlite3, sys, json
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=30)
counts = set()
while True:
    done = os.path.exists(stop)
    rows = conn.execute("SELECT version FROM aliases WHERE name='churn' AND alias='production'").fetchall()
    counts.add(len(rows))
    if done:  # one last look after every writer has finished
        break
print(json.dumps(sorted(counts)))
"""

CLI = BARRIER + r"""
import sys
from loopml.cli import main
folder, me, parties, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
barrier(folder, "go", me, parties)  # imported and ready: all call the CLI at once
sys.exit(main(args))
"""


@pytest.mark.subprocess
def test_parallel_promoters_keep_one_production_version_and_a_consistent_history(tmp_path: Path) -> None:
    db, stop = tmp_path / "registry.db", tmp_path / "stop"
    SqliteRegistry(db)  # create schema first
    observer = subprocess.Popen([sys.executable, "-c", OBSERVER, str(db), str(stop)],
                                stdout=subprocess.PIPE, text=True)
    parties, rounds = 6, 15
    results = race_promoters(str(db), tmp_path / "barriers", parties, rounds)
    stop.touch()
    seen_counts = json.loads(observer.communicate(timeout=60)[0])

    # Every round was a real race among all six, and exactly one of them won it.
    assert sum(r["won"] for r in results) == rounds
    assert sum(r["stale"] for r in results) == rounds * (parties - 1)
    # At every observation the alias named at most one version.
    assert set(seen_counts) <= {0, 1} and 1 in seen_counts
    reg = SqliteRegistry(db)
    assert [v.version for v in reg.list_versions("churn")] == list(range(1, rounds * parties + 1))
    promotions = [e for e in reg.history("churn") if e.action == "promote"]
    assert len(promotions) == rounds
    for before, after in itertools.pairwise(promotions):  # linearizable: no lost update
        assert after.from_version == before.to_version
    assert reg.get("churn", alias="production").version == promotions[-1].to_version


@pytest.fixture
def three_promoted(tmp_path: Path) -> tuple[Path, SqliteRegistry]:
    """A project whose production went v1 -> v2 -> v3, and versions 4..9 waiting."""
    (tmp_path / "loopml.toml").write_text('project = "race"\n')
    reg = SqliteRegistry(tmp_path / ".loopml" / "registry.db")
    for _ in range(9):
        reg.register("churn", artifact_key="models/x", artifact_sha256="c" * 64, actor="t")
    for version, expected in ((1, None), (2, 1), (3, 2)):
        reg.set_alias("churn", "production", version, expected=expected, actor="t", reason="r")
    return tmp_path, reg


def _race_the_cli(project: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    procs = [subprocess.Popen([sys.executable, "-c", CLI, str(project / "go"), str(i), str(len(commands)),
                               *command, "--config", str(project)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
             for i, command in enumerate(commands)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def _production_moves(reg: SqliteRegistry) -> list[tuple[str, int | None, int | None]]:
    return [(e.action, e.from_version, e.to_version) for e in reg.history("churn") if e.alias == "production"]


@pytest.mark.slow
def test_six_operators_rolling_back_the_same_version_move_production_once(three_promoted) -> None:
    project, reg = three_promoted
    results = _race_the_cli(project, [["models", "rollback", "churn", "--expected", "3"]] * 6)
    assert sorted(r.returncode for r in results) == [0] + [2] * 5, [r.stderr for r in results]
    assert sum("points at v2, not v3" in r.stderr for r in results) == 5
    assert reg.get("churn", alias="production").version == 2  # one step back, not five
    assert _production_moves(reg)[-1] == ("rollback", 3, 2)
    assert [m[0] for m in _production_moves(reg)].count("rollback") == 1


@pytest.mark.slow
def test_six_concurrent_promotions_have_one_winner_and_scripts_without_expected_move_nothing(
        three_promoted) -> None:
    project, reg = three_promoted
    results = _race_the_cli(project, [["models", "promote", f"churn:{v}", "--expected", "3"] for v in range(4, 10)])
    assert sorted(r.returncode for r in results) == [0] + [2] * 5, [r.stderr for r in results]
    winner = next(r for r in results if r.returncode == 0)
    production = reg.get("churn", alias="production").version
    assert f"v3 -> v{production}" in winner.stdout
    assert [m for m in _production_moves(reg) if m[1] == 3 and m[0] == "promote"] == [("promote", 3, production)]

    # Scripts (no terminal) that do not say which version they replace are refused and change nothing.
    results = _race_the_cli(project, [["models", "promote", "churn:4"], ["models", "rollback", "churn"]])
    assert [r.returncode for r in results] == [2, 2]
    assert all(f"pass --expected {production}" in r.stderr for r in results)
    assert reg.get("churn", alias="production").version == production
