"""outbound queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 07:43:10.161883
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('delivery_attempts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('queue_id', sa.String(length=40), nullable=False),
    sa.Column('message_pk', sa.String(length=40), nullable=False),
    sa.Column('rcpt', sa.String(length=1000), nullable=False),
    sa.Column('outcome', sa.String(length=12), nullable=False),
    sa.Column('remote_host', sa.String(length=255), nullable=True),
    sa.Column('remote_ip', sa.String(length=64), nullable=True),
    sa.Column('code', sa.Integer(), nullable=True),
    sa.Column('enhanced', sa.String(length=16), nullable=True),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('tls_version', sa.String(length=16), nullable=True),
    sa.Column('tls_verified', sa.Boolean(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempts'))
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_attempts_message_pk'), ['message_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_attempts_queue_id'), ['queue_id'], unique=False)

    op.create_table('outbound_queue',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('organization_id', sa.String(length=40), nullable=False),
    sa.Column('inbox_id', sa.String(length=320), nullable=False),
    sa.Column('message_pk', sa.String(length=40), nullable=False),
    sa.Column('message_id', sa.String(length=1000), nullable=False),
    sa.Column('thread_id', sa.String(length=40), nullable=False),
    sa.Column('blob_id', sa.String(length=40), nullable=False),
    sa.Column('mail_from', sa.String(length=1000), nullable=False),
    sa.Column('rcpt_domain', sa.String(length=255), nullable=False),
    sa.Column('rcpt_to', sa.JSON(), nullable=False),
    sa.Column('smtputf8', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delayed_notified', sa.Boolean(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbound_queue'))
    )
    with op.batch_alter_table('outbound_queue', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_queue_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbound_queue_message_pk'), ['message_pk'], unique=False)

    op.create_table('suppressions',
    sa.Column('organization_id', sa.String(length=40), nullable=False),
    sa.Column('scope', sa.String(length=320), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('reason', sa.String(length=20), nullable=False),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('organization_id', 'scope', 'address', name=op.f('pk_suppressions'))
    )



def downgrade() -> None:

    op.drop_table('suppressions')
    with op.batch_alter_table('outbound_queue', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_queue_message_pk'))
        batch_op.drop_index('ix_outbound_queue_due')

    op.drop_table('outbound_queue')
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_queue_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_attempts_message_pk'))

    op.drop_table('delivery_attempts')

