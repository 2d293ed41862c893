"""webhooks complete: owning inbox, consecutive failure run and why a webhook was disabled

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-21 13:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbox_id", sa.String(320), nullable=True))
        batch_op.add_column(sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("disabled_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("disabled_reason")
        batch_op.drop_column("consecutive_failures")
        batch_op.drop_column("inbox_id")
