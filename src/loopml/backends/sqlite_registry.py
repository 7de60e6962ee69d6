"""The embedded model registry: one SQLite file, safe across processes.

Every write runs in ``BEGIN IMMEDIATE`` (one writer at a time, others wait up to ``timeout``),
so version numbers never collide and an alias moves only if it still points where the caller
expected (compare-and-set). An alias is one row, so at every instant it names exactly one
version. History is append-only: triggers refuse UPDATE and DELETE on it.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.errors import ModelNotFoundError, RegistryError, StaleAliasError
from loopml.records import HistoryEntry, ModelStatus, ModelVersion, PromotionEvent

STATUSES: tuple[str, ...] = ("candidate", "approved", "rejected", "archived")
LINEAGE_FIELDS = ("dataset_version", "git_commit", "run_id", "params", "metrics", "environment",
                  "lineage", "description")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    artifact_key TEXT NOT NULL, artifact_sha256 TEXT NOT NULL,
    dataset_version TEXT, git_commit TEXT, run_id TEXT,
    params TEXT NOT NULL, metrics TEXT NOT NULL, environment TEXT NOT NULL, lineage TEXT NOT NULL,
    description TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, action TEXT NOT NULL, alias TEXT,
    from_version INTEGER, to_version INTEGER, actor TEXT NOT NULL, reason TEXT NOT NULL,
    evidence_sha256 TEXT, at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
"""


class SqliteRegistryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path | None = None  # default: <home>/registry.db
    timeout: float = 30.0


_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def check_alias(alias: str) -> str:
    """Aliases are short lowercase names (production, staging, canary): they appear in URLs
    (``churn@production``), metric labels and Prefect event payloads."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise RegistryError(f"alias {alias!r} is invalid: use 1-63 lowercase letters, digits, '_' or '-', "
                            "starting with a letter (e.g. production, staging)")
    return alias


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SqliteRegistry:
    """Model registry over SQLite (WAL mode, immediate transactions)."""

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        conn = self._connect()
        try:
            conn.executescript(SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    # ---------------------------------------------------------------- writes
    def register(
        self,
        name: str,
        *,
        artifact_key: str,
        artifact_sha256: str,
        status: ModelStatus = "candidate",
        actor: str,
        reason: str = "",
        **lineage: Any,
    ) -> ModelVersion:
        unknown = set(lineage) - set(LINEAGE_FIELDS)
        if unknown:
            raise RegistryError(f"unknown lineage field(s) {sorted(unknown)}; "
                                f"allowed: {', '.join(LINEAGE_FIELDS)}")
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is invalid; choose one of: {', '.join(STATUSES)}")
        if len(artifact_sha256) != 64:
            raise RegistryError("artifact_sha256 must be the 64-hex sha256 of the stored artifact")
        now = _now()
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                             (name,)).fetchone()
            version = int(row[0])
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (name, version, status, artifact_key, artifact_sha256,
                 lineage.get("dataset_version"), lineage.get("git_commit"), lineage.get("run_id"),
                 json.dumps(lineage.get("params", {}), sort_keys=True, default=str),
                 json.dumps(lineage.get("metrics", {}), sort_keys=True),
                 json.dumps(lineage.get("environment", {}), sort_keys=True),
                 json.dumps(lineage.get("lineage", {}), sort_keys=True, default=str),
                 lineage.get("description", ""), now, actor),
            )
            self._append(db, name, "register", None, None, version, actor,
                         reason or f"registered as {status}", None, now)
        return self.get(name, version)

    def set_status(self, name: str, version: int, status: ModelStatus, *, actor: str,
                   reason: str) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is invalid; choose one of: {', '.join(STATUSES)}")
        with self._tx() as db:
            self._version_row(db, name, version)
            db.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                       (status, name, version))
            self._append(db, name, "status", status, None, version, actor, reason, None, _now())
        return self.get(name, version)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected: int | None,
        actor: str,
        reason: str,
        evidence_sha256: str | None = None,
        action: str = "promote",
    ) -> PromotionEvent:
        """Move ``alias`` to ``version`` only if it currently points at ``expected``.

        ``expected=None`` means "the alias must not exist yet". A mismatch raises
        :class:`StaleAliasError` carrying the actual version; nothing changes.
        """
        check_alias(alias)
        with self._tx() as db:
            return self._move(db, name, alias, version, expected=expected, actor=actor, reason=reason,
                              evidence_sha256=evidence_sha256, action=action)

    def _move(self, db: sqlite3.Connection, name: str, alias: str, version: int, *, expected: int | None,
              actor: str, reason: str, evidence_sha256: str | None, action: str) -> PromotionEvent:
        now = _now()
        target = self._version_row(db, name, version)
        if target["status"] == "rejected":
            raise RegistryError(f"{name} v{version} was rejected; it cannot become {alias!r}")
        row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                         (name, alias)).fetchone()
        actual = None if row is None else int(row[0])
        if actual != expected:
            raise StaleAliasError(
                f"{name}@{alias} points at {_v(actual)}, not {_v(expected)} as expected; "
                "someone moved it meanwhile: re-read it and decide again",
                expected=expected, actual=actual)
        db.execute(
            "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT(name, alias) DO UPDATE SET version = excluded.version, "
            "updated_at = excluded.updated_at", (name, alias, version, now))
        self._append(db, name, action, alias, actual, version, actor, reason, evidence_sha256, now)
        return PromotionEvent(name, alias, actual, version, action, actor, reason)  # type: ignore[arg-type]

    def rollback(self, name: str, alias: str, *, actor: str, reason: str,
                 expected: int | None = None) -> PromotionEvent:
        """Point ``alias`` back at the version it held before the promotion that made it current.

        ``expected`` is the version being rolled back: when given, the alias must point at it now,
        else :class:`StaleAliasError` and nothing changes. Two operators rolling back the same bad
        version this way move the alias once; the second is told it already moved. The read and the
        move are one transaction. Rolling back twice does not toggle: after v1 -> v2 and a rollback
        to v1, a second rollback goes to whatever v1 was promoted over (or fails if nothing was)."""
        check_alias(alias)
        with self._tx() as db:
            row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                             (name, alias)).fetchone()
            if row is None:
                raise ModelNotFoundError(f"{name} has no alias {alias!r}; nothing to roll back")
            current = int(row[0])
            if expected is not None and current != expected:
                raise StaleAliasError(
                    f"{name}@{alias} points at {_v(current)}, not {_v(expected)} as expected; "
                    "someone moved it meanwhile: re-read it and decide again",
                    expected=expected, actual=current)
            prev = db.execute(
                "SELECT from_version FROM history WHERE name = ? AND alias = ? AND to_version = ? "
                "AND action = 'promote' ORDER BY id DESC LIMIT 1", (name, alias, current),
            ).fetchone()
            if prev is None or prev[0] is None:
                raise RegistryError(f"{name}@{alias} (v{current}) has no earlier version to roll back to")
            return self._move(db, name, alias, int(prev[0]), expected=current, actor=actor,
                              reason=reason, evidence_sha256=None, action="rollback")

    @staticmethod
    def _append(db: sqlite3.Connection, name: str, action: str, alias: str | None,
                from_v: int | None, to_v: int | None, actor: str, reason: str,
                evidence: str | None, at: str) -> None:
        db.execute("INSERT INTO history (name, action, alias, from_version, to_version, actor, "
                   "reason, evidence_sha256, at) VALUES (?,?,?,?,?,?,?,?,?)",
                   (name, action, alias, from_v, to_v, actor, reason, evidence, at))

    # ---------------------------------------------------------------- reads
    @staticmethod
    def _version_row(db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM versions WHERE name = ? AND version = ?",
                         (name, version)).fetchone()
        if row is None:
            raise ModelNotFoundError(f"model {name!r} has no version {version}; "
                                     f"see `loopml models list {name}`")
        return row

    def get(self, name: str, version: int | None = None, *, alias: str | None = None) -> ModelVersion:
        with self._read() as db:
            if alias is not None:
                row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?",
                                 (name, alias)).fetchone()
                if row is None:
                    raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}")
                version = int(row[0])
            if version is None:
                row = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
                if row[0] is None:
                    raise ModelNotFoundError(f"no model named {name!r} is registered")
                version = int(row[0])
            return _to_version(self._version_row(db, name, version))

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        with self._read() as db:
            if name is None:
                rows = db.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
            else:
                rows = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version",
                                  (name,)).fetchall()
        return [_to_version(r) for r in rows]

    def aliases(self, name: str) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                              (name,)).fetchall()
        return {r["alias"]: int(r["version"]) for r in rows}

    def history(self, name: str) -> list[HistoryEntry]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM history WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [HistoryEntry(r["id"], r["name"], r["action"], r["alias"], r["from_version"],
                             r["to_version"], r["actor"], r["reason"], r["evidence_sha256"],
                             datetime.fromisoformat(r["at"])) for r in rows]


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def _to_version(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=int(row["version"]), status=row["status"],
        artifact_key=row["artifact_key"], artifact_sha256=row["artifact_sha256"],
        created_at=datetime.fromisoformat(row["created_at"]), created_by=row["created_by"],
        dataset_version=row["dataset_version"], git_commit=row["git_commit"], run_id=row["run_id"],
        params=json.loads(row["params"]), metrics=json.loads(row["metrics"]),
        environment=json.loads(row["environment"]), lineage=json.loads(row["lineage"]),
        description=row["description"],
    )
