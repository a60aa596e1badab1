"""Alerts record when their outbound events were queued, so alerts stored just before a crash are
found and published at the next start

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23

Existing alerts count as queued at their raise time: an upgrade does not replay the history.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

import hub.db

revision: str = "0011"
down_revision: Union[str, None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('alert', schema=None) as batch_op:
        batch_op.add_column(sa.Column('events_queued_at', hub.db.UTCDateTime(timezone=True), nullable=True))
    op.execute(sa.text("UPDATE alert SET events_queued_at = raised_at"))
    with op.batch_alter_table('alert', schema=None) as batch_op:
        batch_op.create_index('ix_alert_events_unqueued', ['id'], unique=False,
                              sqlite_where=sa.text('events_queued_at IS NULL'),
                              postgresql_where=sa.text('events_queued_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('alert', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_events_unqueued', sqlite_where=sa.text('events_queued_at IS NULL'),
                            postgresql_where=sa.text('events_queued_at IS NULL'))
        batch_op.drop_column('events_queued_at')
