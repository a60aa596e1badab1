"""usage versions: edits of usage snapshots beside the raw rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
import hub.db


revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "usage_version",
        sa.Column("ld_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("sub_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("measured_time", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("register_value", sa.Float(), nullable=True),
        sa.Column("increment", sa.Float(), nullable=True),
        sa.Column("quality", sa.Integer(), nullable=False),
        sa.Column("author", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("created_at", hub.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ld_id", "sub_number", "measured_time", "version", name=op.f("pk_usage_version")),
    )


def downgrade() -> None:
    op.drop_table("usage_version")
