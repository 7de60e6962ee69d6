"""The model registry on SQL, written once: SQLAlchemy Core over SQLite (the embedded default) or
PostgreSQL (plugin ``loopml_postgres``), with one Alembic history (``registry_migrations``).

Versions are numbered from 1 per model, aliases move by compare-and-set, and history is append-only
(a trigger refuses UPDATE and DELETE). Every write is one transaction that holds the model's write
lock: SQLite's ``BEGIN IMMEDIATE`` (one writer at a time), PostgreSQL's advisory lock on the model
name, so version numbers never collide and an alias moves only if it still points where the caller
expected. A dialect supplies only how to connect and how to lock (:class:`SqlRegistry` subclasses).

The schema is brought to the latest revision when the registry opens: a cheap read of the version
table when it is current, Alembic only when it is not (or for a registry made before migrations,
which is stamped at the first revision it already matches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from loopml.backends.registry_approvals import ApprovalsMixin, guard
from loopml.backends.registry_schema import (  # noqa: F401  (re-exported: the registry's schema API)
    HEAD,
    MIGRATIONS,
    REVISIONS,
    VERSION_TABLE,
    newer,
    newer_text,
    reachable,
    schema_revision,
    upgrade_schema,
)
from loopml.errors import (
    ModelNotFoundError,
    RegistryError,
    RegistrySchemaError,
    StaleAliasError,
)
from loopml.records import HistoryEntry, ModelStatus, ModelVersion, PromotionEvent, Rollout

PRODUCTION, CANARY = "production", "canary"
STATUSES: tuple[str, ...] = ("candidate", "approved", "rejected", "archived")
LINEAGE_FIELDS = ("dataset_version", "git_commit", "run_id", "params", "metrics", "environment",
                  "lineage", "description")
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


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


class SqlRegistry(ApprovalsMixin):
    """The registry over a SQLAlchemy engine; subclasses say how a write transaction locks."""

    upgrades_in_place = False  # the embedded SQLite registry upgrades itself (keeping a copy); others wait
    schema_problem: str | None = None  # why this registry refuses to read or write (a schema to upgrade)

    @reachable
    def __init__(self, engine: Any) -> None:
        """Open the registry: one cheap read of the schema revision. A new database gets the schema;
        an older schema is upgraded only by :meth:`upgrade` (``loopml registry upgrade``), except the
        embedded SQLite file (:attr:`upgrades_in_place`); a newer one is refused."""
        from sqlalchemy import inspect

        self.engine = engine
        with self.engine.connect() as conn:
            current = schema_revision(conn)
            fresh = current is None and not inspect(conn).has_table("versions")
        if current == HEAD:
            return
        if fresh:
            self._migrate()
        elif newer(current):
            self.schema_problem = newer_text(current)
        elif self.upgrades_in_place:
            self._before_upgrade(current)
            self._migrate()
        else:
            self.schema_problem = (f"the registry schema is at revision {current or 'none (made before migrations)'}"
                                   f"; this loopml needs {HEAD}: back the database up, then run `loopml registry "
                                   "upgrade` once; until then loopml neither reads nor writes it")

    def _before_upgrade(self, current: str | None) -> None:
        """Called before an in-place upgrade (the SQLite registry keeps a copy of its file)."""

    def schema_status(self) -> tuple[str | None, str]:
        with self.engine.connect() as conn:
            return schema_revision(conn), HEAD

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to this loopml's revision (an explicit step: ``loopml registry upgrade``)."""
        before, _ = self.schema_status()
        if newer(before):
            raise RegistrySchemaError(newer_text(before))
        if before != HEAD:
            self._migrate()
        self.schema_problem = None
        return before, HEAD

    def _migrate(self) -> None:
        with self._tx("") as conn:
            upgrade_schema(conn)

    @contextlib.contextmanager
    def _tx(self, name: str) -> Iterator[Any]:
        """A write transaction holding ``name``'s lock until it commits or rolls back."""
        with self.engine.connect() as conn:
            conn.info["loopml_write"] = True  # a dialect that locks at BEGIN reads it (SQLite: IMMEDIATE)
            try:
                with conn.begin():
                    self._lock(conn, name)
                    yield conn
            finally:
                conn.info.pop("loopml_write", None)

    def _lock(self, conn: Any, name: str) -> None:
        """Take the write lock of model ``name`` inside the open transaction (dialect-specific)."""

    def _identity(self, conn: Any, claimed: str) -> str:
        """Who the database says is acting, for approvals: the claimed actor here; PostgreSQL's
        registry answers with the database role (``session_user``) instead."""
        return claimed

    @staticmethod
    def _q(conn: Any, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        return conn.execute(text(sql), params)

    # ---------------------------------------------------------------- writes
    @reachable
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
                    created_at, created_by, registered_as) VALUES (:name, :version, :status, :key, :sha, :dataset,
                    :commit, :run, :params, :metrics, :environment, :lineage, :description, :at, :by, :reg)""",
                    name=name, version=version, status=status, key=artifact_key, sha=artifact_sha256,
                    dataset=lineage.get("dataset_version"), commit=lineage.get("git_commit"),
                    run=lineage.get("run_id"),
                    params=json.dumps(lineage.get("params", {}), sort_keys=True, default=str),
                    metrics=json.dumps(lineage.get("metrics", {}), sort_keys=True),
                    environment=json.dumps(lineage.get("environment", {}), sort_keys=True),
                    lineage=json.dumps(lineage.get("lineage", {}), sort_keys=True, default=str),
                    description=lineage.get("description", ""), at=now, by=actor,
                    reg=self._identity(conn, actor))
            self._append(conn, name, "register", None, None, version, actor, reason or f"registered as {status}",
                         None, now)
        return self.get(name, version)

    @reachable
    def set_status(self, name: str, version: int, status: ModelStatus, *, actor: str, reason: str) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is invalid; choose one of: {', '.join(STATUSES)}")
        with self._tx(name) as conn:
            self._version_row(conn, name, version)
            self._q(conn, "UPDATE versions SET status = :s WHERE name = :n AND version = :v",
                    s=status, n=name, v=version)
            self._append(conn, name, "status", status, None, version, actor, reason, None, _now())
        return self.get(name, version)

    @reachable
    def set_alias(self, name: str, alias: str, version: int, *, expected: int | None, actor: str, reason: str,
                  evidence_sha256: str | None = None, action: str = "promote",
                  clear: Mapping[str, int] | None = None, rollout: Rollout | None = None) -> PromotionEvent:
        """Move ``alias`` to ``version`` if it points at ``expected``; in the same transaction remove
        each alias of ``clear`` that still points at the version given for it (else nothing moves).
        ``rollout`` is stored with the alias (how traffic follows a ``canary``) and replaces what was
        stored with it before."""
        check_alias(alias)
        with self._tx(name) as conn:
            event = self._move(conn, name, alias, version, expected=expected, actor=actor, reason=reason,
                               evidence_sha256=evidence_sha256, action=action, rollout=rollout)
            cleared = [self._clear(conn, name, check_alias(other), expected=at, actor=actor, reason=reason)
                       for other, at in (clear or {}).items()]
        return dataclasses.replace(event, cleared=tuple(e for e in cleared if e is not None))

    @reachable
    def clear_alias(self, name: str, alias: str, *, expected: int, actor: str, reason: str) -> PromotionEvent:
        """Remove ``alias`` if it points at ``expected`` (compare-and-set); history records it."""
        check_alias(alias)
        with self._tx(name) as conn:
            event = self._clear(conn, name, alias, expected=expected, actor=actor, reason=reason)
        if event is None:
            raise ModelNotFoundError(f"{name} has no alias {alias!r}; nothing to clear")
        return event

    def _clear(self, conn: Any, name: str, alias: str, *, expected: int | None, actor: str,
               reason: str) -> PromotionEvent | None:
        current = self._alias(conn, name, alias)
        if current is None:
            return None
        if expected is not None and current != expected:
            raise StaleAliasError(f"{name}@{alias} points at {_v(current)}, not {_v(expected)} as expected; "
                                  "someone moved it meanwhile: re-read it and decide again",
                                  expected=expected, actual=current)
        self._q(conn, "DELETE FROM aliases WHERE name = :n AND alias = :a", n=name, a=alias)
        self._append(conn, name, "clear", alias, current, None, actor, reason, None, _now())
        return PromotionEvent(name, alias, current, None, "clear", actor, reason)

    def _move(self, conn: Any, name: str, alias: str, version: int, *, expected: int | None, actor: str,
              reason: str, evidence_sha256: str | None, action: str,
              rollout: Rollout | None = None, approved: bool = False) -> PromotionEvent:
        now = _now()
        target = self._version_row(conn, name, version)
        if target["status"] == "rejected":
            raise RegistryError(f"{name} v{version} was rejected; it cannot become {alias!r}")
        guard(conn, name, alias, version, action, approved=approved)
        actual = self._alias(conn, name, alias)
        if actual != expected:
            raise StaleAliasError(f"{name}@{alias} points at {_v(actual)}, not {_v(expected)} as expected; "
                                  "someone moved it meanwhile: re-read it and decide again",
                                  expected=expected, actual=actual)
        stored = None if rollout is None else json.dumps({"mode": rollout.mode, "share": rollout.share})
        self._q(conn, """INSERT INTO aliases (name, alias, version, updated_at, rollout) VALUES (:n, :a, :v, :t, :r)
                ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version,
                updated_at = excluded.updated_at, rollout = excluded.rollout""",
                n=name, a=alias, v=version, t=now, r=stored)
        self._append(conn, name, action, alias, actual, version, actor, reason, evidence_sha256, now)
        return PromotionEvent(name, alias, actual, version, action, actor, reason)  # type: ignore[arg-type]

    @reachable
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
            event = self._move(conn, name, alias, int(prev[0]), expected=current, actor=actor, reason=reason,
                               evidence_sha256=None, action="rollback")
            # A canary next to the production that was rolled back was judged against it: it goes too.
            canary = self._clear(conn, name, CANARY, expected=None, actor=actor, reason=reason) \
                if alias == PRODUCTION else None
        return dataclasses.replace(event, cleared=(canary,) if canary else ())

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

    @reachable
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

    @reachable
    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            if name is None:
                rows = self._q(conn, "SELECT * FROM versions ORDER BY name, version").mappings().all()
            else:
                rows = self._q(conn, "SELECT * FROM versions WHERE name = :n ORDER BY version", n=name).mappings().all()
        return [_to_version(r) for r in rows]

    @reachable
    def aliases(self, name: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = self._q(conn, "SELECT alias, version FROM aliases WHERE name = :n ORDER BY alias", n=name).all()
        return {r[0]: int(r[1]) for r in rows}

    @reachable
    def rollout(self, name: str, alias: str = CANARY) -> Rollout | None:
        """How traffic follows ``alias`` (``canary``), as recorded when it was set; None if the alias
        is unset or was set without one."""
        with self.engine.connect() as conn:
            row = self._q(conn, "SELECT rollout FROM aliases WHERE name = :n AND alias = :a", n=name, a=alias).first()
        if row is None or row[0] is None:
            return None
        stored = json.loads(row[0])
        return Rollout(stored["mode"], float(stored["share"]))

    @reachable
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
