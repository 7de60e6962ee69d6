"""An alias may carry how traffic follows it: the ``canary`` alias records its rollout (mode and share),
so every replica that reads the registry routes the same way, whatever its own config says."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("rollout", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("rollout")
