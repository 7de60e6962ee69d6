"""Many processes registering and promoting at once leave exactly one production version."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from loopml.backends.sqlite_registry import SqliteRegistry

PROMOTER = r"""
import random, sys, json
from loopml.backends.sqlite_registry import SqliteRegistry
from loopml.errors import StaleAliasError, ModelNotFoundError

db, worker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
reg = SqliteRegistry(db)
won = stale = 0
for i in range(rounds):
    mine = reg.register("churn", artifact_key=f"m/{worker}/{i}", artifact_sha256="b" * 64,
                        actor=worker).version
    try:
        current = reg.get("churn", alias="production").version
    except ModelNotFoundError:
        current = None
    try:
        reg.set_alias("churn", "production", mine, expected=current, actor=worker, reason="race")
        won += 1
    except StaleAliasError:
        stale += 1
print(json.dumps({"won": won, "stale": stale}))
"""

OBSERVER = r"""
import sqlite3, sys, json, time
db, seconds = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(db, timeout=30)
counts = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    rows = conn.execute("SELECT version FROM aliases WHERE name='churn' AND alias='production'").fetchall()
    counts.append(len(rows))
print(json.dumps(sorted(set(counts))))
"""


def test_parallel_promoters_keep_one_production_version_and_a_consistent_history(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    SqliteRegistry(db)  # create schema first
    observer = subprocess.Popen([sys.executable, "-c", OBSERVER, str(db), "4"],
                                stdout=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(db), f"w{i}", "15"],
                                stdout=subprocess.PIPE, text=True) for i in range(6)]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    seen_counts = json.loads(observer.communicate(timeout=60)[0])
    assert all(w.returncode == 0 for w in workers)

    # At every observation the alias named at most one version (0 only before the first promotion).
    assert set(seen_counts) <= {0, 1} and 1 in seen_counts
    reg = SqliteRegistry(db)
    versions = reg.list_versions("churn")
    assert [v.version for v in versions] == list(range(1, 91))  # no duplicate or skipped numbers
    promotions = [e for e in reg.history("churn") if e.action == "promote"]
    assert len(promotions) == sum(r["won"] for r in results)
    assert sum(r["stale"] for r in results) > 0  # the race really happened and stale CAS was refused
    # Linearizable: each promotion starts from where the previous one ended.
    for before, after in itertools.pairwise(promotions):
        assert after.from_version == before.to_version
    assert reg.get("churn", alias="production").version == promotions[-1].to_version
