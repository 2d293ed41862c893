"""inboxes.auth_policy: what the MX does with mail failing authentication, per inbox (NULL = default)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21 12:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auth_policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.drop_column("auth_policy")
