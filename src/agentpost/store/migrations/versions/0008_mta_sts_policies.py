"""mta_sts_policies: the MTA-STS policy last fetched per recipient domain; delivery_attempts.details

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 11:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # RFC 8461 §5.1: a fetched policy is applied until max_age runs out, across restarts.
    op.create_table(
        "mta_sts_policies",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("policy_id", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("mx", sa.JSON(), nullable=False),
        sa.Column("max_age", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_mta_sts_policies")),
    )
    # What an attempt learnt beside the reply: the MTA-STS policy applied and its result, TLS fallbacks.
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.drop_column("details")
    op.drop_table("mta_sts_policies")
