"""Approvals with separation of duties: a policy per alias, promotion requests and their decisions.

``approval_policies`` says how many approvals moving an alias takes; ``promotion_requests`` holds
each request (pending until approved, rejected or superseded); ``approval_decisions`` is append-only
like ``history``. ``versions.registered_as`` keeps the identity that registered a version as the
database saw it (on PostgreSQL the role), so whoever trained a model cannot approve it.
On PostgreSQL a trigger writes the database role into every decision and request, whatever the
client claims: the database itself says who decided.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

APPEND_ONLY = "approval decisions are append-only"


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True)


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("registered_as", sa.Text, nullable=True))
    op.create_table(
        "approval_policies",
        sa.Column("alias", sa.Text, primary_key=True), sa.Column("approvals", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False), sa.Column("updated_by", sa.Text, nullable=False))
    op.create_table(
        "promotion_requests", _id(),
        sa.Column("name", sa.Text, nullable=False), sa.Column("version", sa.Integer, nullable=False),
        sa.Column("alias", sa.Text, nullable=False), sa.Column("expected_version", sa.Integer),
        sa.Column("state", sa.Text, nullable=False), sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("requested_at", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
        sa.Column("clear_canary", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("closed_at", sa.Text),
        sa.ForeignKeyConstraint(["name", "version"], ["versions.name", "versions.version"]),
        sqlite_autoincrement=True)
    op.create_index("requests_by_name", "promotion_requests", ["name", "state"])
    op.create_table(
        "approval_decisions", _id(),
        sa.Column("request_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                  sa.ForeignKey("promotion_requests.id"), nullable=False),
        sa.Column("actor", sa.Text, nullable=False), sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False), sa.Column("at", sa.Text, nullable=False),
        sa.UniqueConstraint("request_id", "actor"), sqlite_autoincrement=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION loopml_decisions_are_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER decisions_no_update BEFORE UPDATE OR DELETE ON approval_decisions
            FOR EACH ROW EXECUTE FUNCTION loopml_decisions_are_append_only()""")
        op.execute("""CREATE FUNCTION loopml_decided_by_role() RETURNS trigger AS $$
            BEGIN NEW.actor := session_user; RETURN NEW; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER decisions_by_role BEFORE INSERT ON approval_decisions
            FOR EACH ROW EXECUTE FUNCTION loopml_decided_by_role()""")
        op.execute("""CREATE FUNCTION loopml_requested_by_role() RETURNS trigger AS $$
            BEGIN NEW.requested_by := session_user; RETURN NEW; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER requests_by_role BEFORE INSERT ON promotion_requests
            FOR EACH ROW EXECUTE FUNCTION loopml_requested_by_role()""")
        op.execute("""CREATE FUNCTION loopml_registered_as_role() RETURNS trigger AS $$
            BEGIN NEW.registered_as := session_user; RETURN NEW; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER versions_by_role BEFORE INSERT ON versions
            FOR EACH ROW EXECUTE FUNCTION loopml_registered_as_role()""")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER decisions_no_{event.lower()} BEFORE {event} ON approval_decisions "
                       f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER versions_by_role ON versions")
    op.drop_table("approval_decisions")
    op.drop_table("promotion_requests")
    op.drop_table("approval_policies")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("registered_as")
    if op.get_bind().dialect.name == "postgresql":
        for fn in ("loopml_decisions_are_append_only", "loopml_decided_by_role", "loopml_requested_by_role",
                   "loopml_registered_as_role"):
            op.execute(f"DROP FUNCTION {fn}()")
