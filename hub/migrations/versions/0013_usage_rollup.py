"""Per-slot usage totals by cluster and area for the secondary-use aggregates, with what tells a
rolled-up slot is still fresh (see hub/model/usage_rollup.py)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

import hub.db

revision: str = "0013"
down_revision: Union[str, None] = "0012"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('usage_rollup',
    sa.Column('sub_number', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('measured_time', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('group_kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('energy', sa.Float(), nullable=True),
    sa.Column('meters', sa.Integer(), nullable=False),
    sa.Column('customers', sa.Integer(), nullable=False),
    sa.Column('normal', sa.Integer(), nullable=False),
    sa.Column('missing', sa.Integer(), nullable=False),
    sa.Column('recollected', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('sub_number', 'measured_time', 'group_kind', 'group_id', name='pk_usage_rollup')
    )
    op.create_table('usage_rollup_slot',
    sa.Column('measured_time', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('measured_time', name=op.f('pk_usage_rollup_slot'))
    )
    op.create_table('usage_rollup_stale',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('measured_time', hub.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_rollup_stale')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('usage_rollup_stale', schema=None) as batch_op:
        batch_op.create_index('ix_usage_rollup_stale_measured_time', ['measured_time'], unique=False)
    op.create_table('usage_rollup_state',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_rollup_state'))
    )
    op.execute("INSERT INTO usage_rollup_state (id, generation) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table('usage_rollup_state')
    with op.batch_alter_table('usage_rollup_stale', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_rollup_stale_measured_time')
    op.drop_table('usage_rollup_stale')
    op.drop_table('usage_rollup_slot')
    op.drop_table('usage_rollup')
