"""domains: the last DNS check of each domain's records

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 09:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One JSON list per domain ([{type, name, value, status, reason}]): what the last check
    # found for each expected record; the status column keeps the domain's verdict.
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dns_check", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.drop_column("verified_at")
        batch_op.drop_column("checked_at")
        batch_op.drop_column("status_reason")
        batch_op.drop_column("dns_check")
