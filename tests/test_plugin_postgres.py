"""The PostgreSQL registry against a real PostgreSQL 15 started here: the registry contract, and the
many-process promotion race."""

from __future__ import annotations

import functools
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from race import race_promoters
from servers import postgres_server

from loopml.backends.sql_registry import HEAD
from loopml.testing import ApprovalsSuite, RegistrySuite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def fresh_database(url: str) -> str:
    """A database of its own per test: the suite expects an empty registry."""
    from sqlalchemy import create_engine

    name = f"t{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


class TestPostgresRegistry(RegistrySuite, ApprovalsSuite):
    @pytest.fixture
    def registry(self, postgres):
        from loopml_postgres import PostgresRegistry

        return PostgresRegistry(fresh_database(postgres))

    @pytest.fixture
    def person(self, registry):
        """Each person is a database role of their own: the database says who decided."""
        return functools.partial(as_role, registry)


def as_role(admin, name: str):
    """The registry of ``admin``'s database, connected as role ``name`` (made and granted if new)."""
    from loopml_postgres import PostgresRegistry

    with admin.engine.connect() as conn:
        if conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %(n)s", {"n": name}).first() is None:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}")
        conn.commit()
    return PostgresRegistry(admin.engine.url.set(username=name).render_as_string(hide_password=False))


def test_on_postgres_the_database_role_decides_whatever_the_client_claims(postgres) -> None:
    """Alice connects as herself and claims to be bob: the registry records alice, and refuses her
    approval of her own request; a raw INSERT of a decision gets the role from a trigger too."""
    from sqlalchemy import text

    from loopml.errors import SeparationOfDutiesError
    from loopml_postgres import PostgresRegistry

    admin = PostgresRegistry(fresh_database(postgres))
    trainer, alice = as_role(admin, "trainer"), as_role(admin, "alice")
    trainer.register("churn", artifact_key="k", artifact_sha256="a" * 64, status="approved", actor="pipeline")
    assert trainer.get("churn", 1).created_by == "pipeline"  # what the client said, kept for people
    admin.apply_policy({"production": 1}, actor="admin")
    request = alice.request_promotion("churn", 1, "production", expected=None, actor="bob", reason="r")
    assert request.requested_by == "alice"
    with pytest.raises(SeparationOfDutiesError, match="alice requested"):
        alice.decide(request.id, "approve", actor="bob", reason="claiming to be bob")
    with pytest.raises(SeparationOfDutiesError, match="trainer registered"):
        trainer.decide(request.id, "approve", actor="carol", reason="claiming to be carol")
    with alice.engine.begin() as conn:  # around loopml altogether: the trigger writes the role
        conn.execute(text("INSERT INTO approval_decisions (request_id, actor, decision, reason, at) "
                          "VALUES (:r, 'bob', 'approve', 'raw', 'now')"), {"r": request.id})
        assert conn.execute(text("SELECT actor FROM approval_decisions")).scalar_one() == "alice"
        conn.rollback()


def test_history_is_append_only_in_the_database_itself(postgres) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from loopml_postgres import PostgresRegistry

    registry = PostgresRegistry(fresh_database(postgres))
    registry.register("churn", artifact_key="m/1", artifact_sha256="a" * 64, actor="t")
    for sql in ("UPDATE history SET reason = 'rewritten'", "DELETE FROM history"):
        with pytest.raises(DBAPIError, match="append-only"), registry.engine.begin() as conn:
            conn.execute(text(sql))
    assert [e.action for e in registry.history("churn")] == ["register"]


def test_the_backend_is_selected_by_config_and_the_url_is_a_secret(postgres, tmp_path: Path, capsys) -> None:
    from loopml.cli import main

    database = fresh_database(postgres)
    (tmp_path / "loopml.toml").write_text(f'[registry]\nbackend = "postgres"\n[registry.options]\nurl = "{database}"\n')
    assert main(["models", "list", "--json", "--config", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["config", "--json", "--config", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert database not in shown and "**********" in shown


def test_parallel_promoters_on_postgres_keep_one_winner_per_round(postgres, tmp_path: Path) -> None:
    from loopml_postgres import PostgresRegistry

    url = fresh_database(postgres)
    PostgresRegistry(url)  # migrate once
    parties, rounds = 6, 10
    results = race_promoters(url, tmp_path / "barriers", parties, rounds)
    assert sum(r["won"] for r in results) == rounds and sum(r["stale"] for r in results) == rounds * (parties - 1)
    registry = PostgresRegistry(url)
    assert [v.version for v in registry.list_versions("churn")] == list(range(1, rounds * parties + 1))
    promotions = [e for e in registry.history("churn") if e.action == "promote"]
    for before, after in itertools.pairwise(promotions):  # linearizable: no lost update
        assert after.from_version == before.to_version
    assert registry.get("churn", alias="production").version == promotions[-1].to_version


def schema_at(url: str, revision: str) -> None:
    """Make the database's registry schema the one of ``revision`` (what an older loopml left)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from loopml.backends.sql_registry import MIGRATIONS

    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        conn.exec_driver_sql("INSERT INTO versions VALUES ('churn', 1, 'approved', 'k', '" + "0" * 64 + "', NULL, "
                             "NULL, NULL, '{}', '{}', '{}', '{}', '', '2026-01-01T00:00:00+00:00', 'old')")
    engine.dispose()


def test_an_older_schema_is_upgraded_only_by_the_explicit_command(postgres, tmp_path: Path) -> None:
    """Opening no longer migrates a shared database behind every replica's back: commands refuse
    with one line naming `loopml registry upgrade`, which upgrades it once."""
    import subprocess
    import sys

    from loopml.errors import RegistrySchemaError
    from loopml_postgres import PostgresRegistry

    url = fresh_database(postgres)
    schema_at(url, "0001")
    with pytest.raises(RegistrySchemaError, match="loopml registry upgrade"):
        PostgresRegistry(url).list_versions()
    config = tmp_path / "loopml.toml"
    config.write_text(f'project = "p"\n[registry]\nbackend = "postgres"\n[registry.options]\nurl = "{url}"\n')

    def loopml(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "loopml.cli", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=120)

    listed = loopml("models", "list")
    assert listed.returncode == 2 and "loopml registry upgrade" in listed.stderr, listed.stderr[-2000:]
    assert "0001" in loopml("registry", "status").stdout
    upgraded = loopml("registry", "upgrade")
    assert upgraded.returncode == 0 and f"0001 -> {HEAD}" in upgraded.stdout, upgraded.stderr[-2000:]
    assert f"already at {HEAD}" in loopml("registry", "upgrade").stdout  # safe to repeat
    assert [v.created_by for v in PostgresRegistry(url).list_versions()] == ["old"]  # kept
