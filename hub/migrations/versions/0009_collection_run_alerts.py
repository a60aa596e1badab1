"""collection runs count the alerts their diagnosis raised

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "0009"
down_revision: Union[str, None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("collection_run") as batch:
        batch.add_column(sa.Column("alerts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("collection_run") as batch:
        batch.drop_column("alerts")
