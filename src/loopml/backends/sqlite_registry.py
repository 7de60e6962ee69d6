"""The embedded model registry: one SQLite file, safe across processes.

The registry itself is :class:`loopml.backends.sql_registry.SqlRegistry`; SQLite supplies the
connection (WAL, foreign keys, a busy timeout) and the write lock: every write transaction starts
with ``BEGIN IMMEDIATE``, so one writer at a time holds the file and the others wait up to
``timeout``. History is append-only: triggers refuse UPDATE and DELETE on it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loopml.backends.sql_registry import HEAD, SqlRegistry
from loopml.errors import RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)


class SqliteRegistryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path | None = None  # default: <home>/registry.db
    timeout: float = 30.0


class SqliteRegistry(SqlRegistry):
    """Model registry over SQLite (WAL mode, immediate write transactions)."""

    upgrades_in_place = True  # one file on one machine: upgraded when a new loopml opens it, a copy kept

    def _before_upgrade(self, current: str | None) -> None:
        backup = self.path.with_name(f"{self.path.name}.before-{HEAD}")
        with sqlite3.connect(self.path) as source, sqlite3.connect(backup) as target:
            source.backup(target)
        log.warning("upgrading the registry %s from schema %s to %s (a copy of it before: %s)", self.path,
                    current or "none", HEAD, backup)

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        from sqlalchemy.exc import OperationalError

        self.path = Path(path)
        self.timeout = timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            super().__init__(sqlite_engine(self.path, timeout))
        except (OperationalError, PermissionError, RegistryUnavailableError):
            if self.path.parent.is_dir() and os.access(self.path.parent, os.W_OK) and \
                    (not self.path.exists() or os.access(self.path, os.W_OK)):
                raise
            raise RegistryError(f"cannot open the registry {self.path}: {self.path.parent} cannot be created or "
                                f"written by uid {os.getuid()} (SQLite writes the file and its journal "
                                "there); make the folder writable for this user (e.g. chown it to uid 10001 "
                                "for loopml's image), mount a writable volume there, or use a shared "
                                "registry ([registry] backend = \"postgres\")") from None


def sqlite_engine(path: Path, timeout: float) -> Any:
    """A SQLAlchemy engine on ``path`` whose write transactions begin IMMEDIATE (see SqlRegistry._tx)."""
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", f"busy_timeout={int(timeout * 1000)}"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("loopml_write") else "BEGIN")

    return engine
