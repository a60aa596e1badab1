"""IEEE 1888 points: point registry, point values, forwarding queue

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
import hub.db


revision: str = "0008"
down_revision: Union[str, None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('fiap_point',
    sa.Column('point_id', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('unit', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('ld_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sub_number', sa.Integer(), nullable=True),
    sa.Column('created_at', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('point_id', name=op.f('pk_fiap_point'))
    )
    with op.batch_alter_table('fiap_point', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fiap_point_ld_id'), ['ld_id'], unique=False)

    op.create_table('fiap_value',
    sa.Column('point_id', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('time', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=1023), nullable=False),
    sa.Column('number', sa.Float(), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('received_at', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('point_id', 'time', name=op.f('pk_fiap_value'))
    )

    op.create_table('fiap_outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('upstream', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('point_id', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('time', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=1023), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
    sa.Column('queued_at', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fiap_outbox'))
    )
    with op.batch_alter_table('fiap_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_fiap_outbox_due', ['upstream', 'state', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fiap_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_fiap_outbox_due')
    op.drop_table('fiap_outbox')
    op.drop_table('fiap_value')
    with op.batch_alter_table('fiap_point', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fiap_point_ld_id'))
    op.drop_table('fiap_point')
