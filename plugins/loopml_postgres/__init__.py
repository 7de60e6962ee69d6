"""Model registry on PostgreSQL for loopml: ``[registry] backend = "postgres"``.

The same contract as the embedded SQLite registry, for teams whose Prefect workers and servers run
on many machines: versions numbered from 1 per model, compare-and-set aliases, append-only history.
SQLAlchemy 2 (Core) over psycopg 3; the schema is created and upgraded by Alembic migrations
(``loopml_postgres/migrations``) when the registry is opened.

Concurrency: ``register`` and every alias move run in one transaction holding a transaction-scoped
advisory lock on the model name (``pg_advisory_xact_lock``), so version numbers never collide and an
alias moves only if it still points where the caller expected. A trigger refuses UPDATE and DELETE
on ``history``. The same PostgreSQL can hold MLflow's tracking store and Prefect's database (each in
its own database); see docs/plugins.md.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.backends.sqlite_registry import LINEAGE_FIELDS, STATUSES, _now, _v, check_alias
from loopml.errors import ConfigError, ModelNotFoundError, RegistryError, StaleAliasError
from loopml.plugins import hookimpl
from loopml.records import HistoryEntry, ModelStatus, ModelVersion, PromotionEvent
from loopml.specs import BackendSpec

MIGRATIONS = Path(__file__).parent / "migrations"


class PostgresRegistryOptions(BaseModel):
    """``[registry] backend = "postgres"`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: SecretStr  # postgresql+psycopg://user:password@host:5432/loopml (a secret: it may hold a password)
    pool_size: int = 5
    connect_timeout: float = 10.0


def migrate(engine: Any) -> None:
    """Bring the schema to the latest Alembic revision (idempotent; safe from many processes)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7319)")  # one migrator at a time
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class PostgresRegistry:
    """Model registry over PostgreSQL (SQLAlchemy Core, psycopg 3)."""

    def __init__(self, url: str, *, pool_size: int = 5, connect_timeout: float = 10.0) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                                    connect_args={"connect_timeout": int(connect_timeout)})
        migrate(self.engine)

    @contextlib.contextmanager
    def _tx(self, name: str) -> Iterator[Any]:
        """A transaction holding the model's advisory lock until it commits or rolls back."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0))", {"k": name})
            yield conn

    @staticmethod
    def _q(conn: Any, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        return conn.execute(text(sql), params)

    # ---------------------------------------------------------------- writes
    def register(self, name: str, *, artifact_key: str, artifact_sha256: str, status: ModelStatus = "candidate",
                 actor: str, reason: str = "", **lineage: Any) -> ModelVersion:
        unknown = set(lineage) - set(LINEAGE_FIELDS)
        if unknown:
            raise RegistryError(f"unknown lineage field(s) {sorted(unknown)}; allowed: {', '.join(LINEAGE_FIELDS)}")
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is invalid; choose one of: {', '.join(STATUSES)}")
        if len(artifact_sha256) != 64:
            raise RegistryError("artifact_sha256 must be the 64-hex sha256 of the stored artifact")
        now = _now()
        with self._tx(name) as conn:
            version = int(self._q(conn, "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = :n",
                                  n=name).scalar_one())
            self._q(conn, """INSERT INTO versions (name, version, status, artifact_key, artifact_sha256,
                    dataset_version, git_commit, run_id, params, metrics, environment, lineage, description,
                    created_at, created_by) VALUES (:name, :version, :status, :key, :sha, :dataset, :commit, :run,
                    :params, :metrics, :environment, :lineage, :description, :at, :by)""",
                    name=name, version=version, status=status, key=artifact_key, sha=artifact_sha256,
                    dataset=lineage.get("dataset_version"), commit=lineage.get("git_commit"),
                    run=lineage.get("run_id"),
                    params=json.dumps(lineage.get("params", {}), sort_keys=True, default=str),
                    metrics=json.dumps(lineage.get("metrics", {}), sort_keys=True),
                    environment=json.dumps(lineage.get("environment", {}), sort_keys=True),
                    lineage=json.dumps(lineage.get("lineage", {}), sort_keys=True, default=str),
                    description=lineage.get("description", ""), at=now, by=actor)
            self._append(conn, name, "register", None, None, version, actor, reason or f"registered as {status}",
                         None, now)
        return self.get(name, version)

    def set_status(self, name: str, version: int, status: ModelStatus, *, actor: str, reason: str) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is invalid; choose one of: {', '.join(STATUSES)}")
        with self._tx(name) as conn:
            self._version_row(conn, name, version)
            self._q(conn, "UPDATE versions SET status = :s WHERE name = :n AND version = :v",
                    s=status, n=name, v=version)
            self._append(conn, name, "status", status, None, version, actor, reason, None, _now())
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: int, *, expected: int | None, actor: str, reason: str,
                  evidence_sha256: str | None = None, action: str = "promote") -> PromotionEvent:
        check_alias(alias)
        with self._tx(name) as conn:
            return self._move(conn, name, alias, version, expected=expected, actor=actor, reason=reason,
                              evidence_sha256=evidence_sha256, action=action)

    def _move(self, conn: Any, name: str, alias: str, version: int, *, expected: int | None, actor: str,
              reason: str, evidence_sha256: str | None, action: str) -> PromotionEvent:
        now = _now()
        target = self._version_row(conn, name, version)
        if target["status"] == "rejected":
            raise RegistryError(f"{name} v{version} was rejected; it cannot become {alias!r}")
        actual = self._alias(conn, name, alias)
        if actual != expected:
            raise StaleAliasError(f"{name}@{alias} points at {_v(actual)}, not {_v(expected)} as expected; "
                                  "someone moved it meanwhile: re-read it and decide again",
                                  expected=expected, actual=actual)
        self._q(conn, """INSERT INTO aliases (name, alias, version, updated_at) VALUES (:n, :a, :v, :t)
                ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at""",
                n=name, a=alias, v=version, t=now)
        self._append(conn, name, action, alias, actual, version, actor, reason, evidence_sha256, now)
        return PromotionEvent(name, alias, actual, version, action, actor, reason)  # type: ignore[arg-type]

    def rollback(self, name: str, alias: str, *, actor: str, reason: str,
                 expected: int | None = None) -> PromotionEvent:
        check_alias(alias)
        with self._tx(name) as conn:
            current = self._alias(conn, name, alias)
            if current is None:
                raise ModelNotFoundError(f"{name} has no alias {alias!r}; nothing to roll back")
            if expected is not None and current != expected:
                raise StaleAliasError(f"{name}@{alias} points at {_v(current)}, not {_v(expected)} as expected; "
                                      "someone moved it meanwhile: re-read it and decide again",
                                      expected=expected, actual=current)
            prev = self._q(conn, """SELECT from_version FROM history WHERE name = :n AND alias = :a
                           AND to_version = :v AND action = 'promote' ORDER BY id DESC LIMIT 1""",
                           n=name, a=alias, v=current).first()
            if prev is None or prev[0] is None:
                raise RegistryError(f"{name}@{alias} (v{current}) has no earlier version to roll back to")
            return self._move(conn, name, alias, int(prev[0]), expected=current, actor=actor, reason=reason,
                              evidence_sha256=None, action="rollback")

    def _append(self, conn: Any, name: str, action: str, alias: str | None, from_v: int | None, to_v: int | None,
                actor: str, reason: str, evidence: str | None, at: str) -> None:
        self._q(conn, """INSERT INTO history (name, action, alias, from_version, to_version, actor, reason,
                evidence_sha256, at) VALUES (:n, :action, :alias, :f, :t, :actor, :reason, :e, :at)""",
                n=name, action=action, alias=alias, f=from_v, t=to_v, actor=actor, reason=reason, e=evidence, at=at)

    # ---------------------------------------------------------------- reads
    def _alias(self, conn: Any, name: str, alias: str) -> int | None:
        row = self._q(conn, "SELECT version FROM aliases WHERE name = :n AND alias = :a", n=name, a=alias).first()
        return None if row is None else int(row[0])

    def _version_row(self, conn: Any, name: str, version: int) -> Any:
        row = self._q(conn, "SELECT * FROM versions WHERE name = :n AND version = :v",
                      n=name, v=version).mappings().first()
        if row is None:
            raise ModelNotFoundError(f"model {name!r} has no version {version}; see `loopml models list {name}`")
        return row

    def get(self, name: str, version: int | None = None, *, alias: str | None = None) -> ModelVersion:
        with self.engine.connect() as conn:
            if alias is not None:
                version = self._alias(conn, name, alias)
                if version is None:
                    raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}")
            if version is None:
                latest = self._q(conn, "SELECT MAX(version) FROM versions WHERE name = :n", n=name).scalar()
                if latest is None:
                    raise ModelNotFoundError(f"no model named {name!r} is registered")
                version = int(latest)
            return _to_version(self._version_row(conn, name, version))

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            if name is None:
                rows = self._q(conn, "SELECT * FROM versions ORDER BY name, version").mappings().all()
            else:
                rows = self._q(conn, "SELECT * FROM versions WHERE name = :n ORDER BY version", n=name).mappings().all()
        return [_to_version(r) for r in rows]

    def aliases(self, name: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = self._q(conn, "SELECT alias, version FROM aliases WHERE name = :n ORDER BY alias", n=name).all()
        return {r[0]: int(r[1]) for r in rows}

    def history(self, name: str) -> list[HistoryEntry]:
        with self.engine.connect() as conn:
            rows = self._q(conn, "SELECT * FROM history WHERE name = :n ORDER BY id", n=name).mappings().all()
        return [HistoryEntry(r["id"], r["name"], r["action"], r["alias"], r["from_version"], r["to_version"],
                             r["actor"], r["reason"], r["evidence_sha256"], datetime.fromisoformat(r["at"]))
                for r in rows]


def _to_version(row: Any) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=int(row["version"]), status=row["status"], artifact_key=row["artifact_key"],
        artifact_sha256=row["artifact_sha256"], created_at=datetime.fromisoformat(row["created_at"]),
        created_by=row["created_by"], dataset_version=row["dataset_version"], git_commit=row["git_commit"],
        run_id=row["run_id"], params=json.loads(row["params"]), metrics=json.loads(row["metrics"]),
        environment=json.loads(row["environment"]), lineage=json.loads(row["lineage"]),
        description=row["description"])


def _factory(options: PostgresRegistryOptions, ctx: Any) -> PostgresRegistry:
    url = options.url.get_secret_value()
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ConfigError("registry.options.url must be a postgresql+psycopg://user:pass@host:port/db URL")
    return PostgresRegistry(url.replace("postgresql://", "postgresql+psycopg://", 1),
                            pool_size=options.pool_size, connect_timeout=options.connect_timeout)


@hookimpl
def loopml_registries() -> list[BackendSpec]:
    return [BackendSpec("postgres", _factory, PostgresRegistryOptions,
                        "model registry on PostgreSQL (SQLAlchemy + psycopg; Alembic migrations)",
                        requires=("sqlalchemy", "psycopg", "alembic"))]
