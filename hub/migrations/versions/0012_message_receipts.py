"""Inbound enterprise messages taken in, by sender and message ID, with the reply given, so a
resent message gets the first reply and is acted on once, across restarts

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

import hub.db

revision: str = "0012"
down_revision: Union[str, None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('message_receipt',
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('reply', sa.Text(), nullable=True),
    sa.Column('received_at', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('replied_at', hub.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('channel', 'sender', 'message_id', name='pk_message_receipt')
    )
    with op.batch_alter_table('message_receipt', schema=None) as batch_op:
        batch_op.create_index('ix_message_receipt_received_at', ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('message_receipt', schema=None) as batch_op:
        batch_op.drop_index('ix_message_receipt_received_at')
    op.drop_table('message_receipt')
