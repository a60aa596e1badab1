"""contract-capacity reservations held for DR events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
import hub.db


revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "adr_reservation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ld_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("he_id", sa.Integer(), nullable=False),
        sa.Column("device_key", sa.Integer(), nullable=False),
        sa.Column("ld_address", sa.Integer(), nullable=False),
        sa.Column("start_at", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_at", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("amps", sa.Integer(), nullable=False),
        sa.Column("reservation_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adr_reservation")),
    )
    with op.batch_alter_table("adr_reservation", schema=None) as batch_op:
        batch_op.create_index("ix_adr_reservation_ld_state", ["ld_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adr_reservation", schema=None) as batch_op:
        batch_op.drop_index("ix_adr_reservation_ld_state")
    op.drop_table("adr_reservation")
