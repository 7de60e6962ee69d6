"""One registry schema for SQLite and PostgreSQL, in one Alembic history; older registries keep working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loopml.backends import sql_registry
from loopml.backends.sqlite_registry import SqliteRegistry

BEFORE_MIGRATIONS = """
CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    artifact_key TEXT NOT NULL, artifact_sha256 TEXT NOT NULL, dataset_version TEXT, git_commit TEXT, run_id TEXT,
    params TEXT NOT NULL, metrics TEXT NOT NULL, environment TEXT NOT NULL, lineage TEXT NOT NULL,
    description TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias), FOREIGN KEY (name, version) REFERENCES versions(name, version));
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, action TEXT NOT NULL, alias TEXT,
    from_version INTEGER, to_version INTEGER, actor TEXT NOT NULL, reason TEXT NOT NULL,
    evidence_sha256 TEXT, at TEXT NOT NULL);
CREATE TRIGGER history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
CREATE TRIGGER history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'registry history is append-only'); END;
INSERT INTO versions VALUES ('churn', 1, 'approved', 'models/churn/a/model.pt2', '%s', 'labels@1', 'abc', 'run1',
    '{}', '{}', '{}', '{}', '', '2026-01-01T00:00:00+00:00', 'someone');
INSERT INTO aliases VALUES ('churn', 'production', 1, '2026-01-01T00:00:00+00:00');
INSERT INTO history (name, action, alias, from_version, to_version, actor, reason, at)
    VALUES ('churn', 'promote', 'production', NULL, 1, 'someone', 'first', '2026-01-01T00:00:00+00:00');
""" % ("0" * 64)


def test_a_registry_made_before_migrations_keeps_its_models_and_joins_the_history(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(BEFORE_MIGRATIONS)
    registry = SqliteRegistry(db)
    assert registry.aliases("churn") == {"production": 1}
    assert registry.get("churn", alias="production").created_by == "someone"
    with registry.engine.connect() as conn:
        assert sql_registry.schema_revision(conn) == sql_registry.HEAD
    v2 = registry.register("churn", artifact_key="k", artifact_sha256="1" * 64, status="approved", actor="t")
    registry.set_alias("churn", "production", v2.version, expected=1, actor="t", reason="second")
    assert [h.action for h in registry.history("churn")] == ["promote", "register", "promote"]
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM history")


def test_an_up_to_date_registry_opens_without_running_alembic(tmp_path: Path, monkeypatch) -> None:
    SqliteRegistry(tmp_path / "registry.db")  # created and migrated once

    def no_migration(conn: object) -> None:
        raise AssertionError("Alembic ran on a registry already at the latest revision")

    monkeypatch.setattr(sql_registry, "upgrade_schema", no_migration)
    assert SqliteRegistry(tmp_path / "registry.db").list_versions() == []


def test_the_embedded_registry_upgrades_itself_keeping_a_copy(tmp_path: Path) -> None:
    """SQLite is one file on one machine: a new loopml upgrades it when it opens it, and keeps the
    file as it was next to it."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    db = tmp_path / "registry.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(sql_registry.MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    registry = SqliteRegistry(db)
    assert registry.schema_status() == (sql_registry.HEAD, sql_registry.HEAD)
    assert (tmp_path / f"registry.db.before-{sql_registry.HEAD}").is_file()
    assert registry.list_versions() == []
