"""queue: count delay notices instead of a single flag

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 08:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # message.delayed is sent on the first deferral and again at configured ages: count them.
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delay_notices", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE outbound_queue SET delay_notices = 1 WHERE delayed_notified")
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.drop_column("delayed_notified")


def downgrade() -> None:
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delayed_notified", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE outbound_queue SET delayed_notified = (delay_notices > 0)")
    with op.batch_alter_table("outbound_queue", schema=None) as batch_op:
        batch_op.drop_column("delay_notices")
