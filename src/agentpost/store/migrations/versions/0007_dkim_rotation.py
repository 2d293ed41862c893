"""dkim_keys: rotation states (pending, active, retiring, retired) and when each key entered them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 10:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retiring_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    # Keys signing before this revision started signing when they were created.
    op.execute("UPDATE dkim_keys SET activated_at = created_at WHERE status = 'active'")


def downgrade() -> None:
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.drop_column("retired_at")
        batch_op.drop_column("retiring_at")
        batch_op.drop_column("activated_at")
