"""drafts (edited, scheduled and held-for-approval sends); inboxes.send_requires_approval

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21 13:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("inbox_id", sa.String(length=320), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("to", sa.JSON(), nullable=True),
        sa.Column("cc", sa.JSON(), nullable=True),
        sa.Column("bcc", sa.JSON(), nullable=True),
        sa.Column("reply_to", sa.JSON(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("attachments", sa.JSON(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("in_reply_to", sa.String(length=998), nullable=True),
        sa.Column("references", sa.JSON(), nullable=True),
        sa.Column("forward_of", sa.String(length=998), nullable=True),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_status", sa.String(length=20), nullable=True),
        sa.Column("send_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drafts")),
        sa.UniqueConstraint("inbox_id", "client_id", name=op.f("uq_drafts_inbox_id_client_id")),
    )
    op.create_index("ix_drafts_org_updated", "drafts", ["organization_id", "updated_at"])
    op.create_index("ix_drafts_due", "drafts", ["send_status", "next_attempt_at"])
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("send_requires_approval", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("inboxes", schema=None) as batch_op:
        batch_op.drop_column("send_requires_approval")
    op.drop_index("ix_drafts_due", table_name="drafts")
    op.drop_index("ix_drafts_org_updated", table_name="drafts")
    op.drop_table("drafts")
