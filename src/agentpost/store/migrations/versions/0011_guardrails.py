"""guardrails: allow/block list entries, and the inbox settings default_deny, send_limits, loop_protection

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "list_entries",
        sa.Column("organization_id", sa.String(40), primary_key=True),
        sa.Column("scope", sa.String(320), primary_key=True),
        sa.Column("direction", sa.String(10), primary_key=True),
        sa.Column("list_type", sa.String(10), primary_key=True),
        sa.Column("entry", sa.String(320), primary_key=True),
        sa.Column("entry_type", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_deny", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("send_limits", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("loop_protection", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.drop_column("loop_protection")
        batch_op.drop_column("send_limits")
        batch_op.drop_column("default_deny")
    op.drop_table("list_entries")
