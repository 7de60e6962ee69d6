"""Processes racing on a registry, met at file barriers: every round is a real race whatever the load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BARRIER = r"""
import os, time
def barrier(folder, name, me, parties):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{name}.{me}"), "w").close()
    while sum(1 for f in os.listdir(folder) if f.startswith(name + ".")) < parties:
        time.sleep(0.005)
"""

PROMOTER = BARRIER + r"""
import sys, json
from loopml.errors import StaleAliasError, ModelNotFoundError

target, worker, rounds, parties, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if target.startswith("postgresql"):
    from loopml_postgres import PostgresRegistry as Registry
else:
    from loopml.backends.sqlite_registry import SqliteRegistry as Registry
reg = Registry(target)
won = stale = 0
for i in range(rounds):
    mine = reg.register("churn", artifact_key=f"m/{worker}/{i}", artifact_sha256="b" * 64,
                        actor=worker).version
    try:
        current = reg.get("churn", alias="production").version
    except ModelNotFoundError:
        current = None
    barrier(folder, f"read{i}", worker, parties)  # everyone has read before anyone writes
    try:
        reg.set_alias("churn", "production", mine, expected=current, actor=worker, reason="race")
        won += 1
    except StaleAliasError:
        stale += 1
    barrier(folder, f"wrote{i}", worker, parties)
print(json.dumps({"won": won, "stale": stale}))
"""


def race_promoters(target: str, barriers: Path, parties: int, rounds: int) -> list[dict[str, int]]:
    """``parties`` processes each register and promote ``rounds`` times against the registry at
    ``target`` (a SQLite path or a PostgreSQL URL); returns each one's wins and stale refusals."""
    workers = [subprocess.Popen([sys.executable, "-c", PROMOTER, target, f"w{i}", str(rounds), str(parties),
                                 str(barriers)], stdout=subprocess.PIPE, text=True) for i in range(parties)]
    results = [json.loads(w.communicate(timeout=300)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    return results
