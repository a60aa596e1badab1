"""physical devices of a concentrator in key order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("physical_device") as batch_op:
        batch_op.create_index("ix_physical_device_concentrator_key", ["concentrator_id", "id"], unique=False)
        batch_op.drop_index("ix_physical_device_concentrator_id")


def downgrade() -> None:
    with op.batch_alter_table("physical_device") as batch_op:
        batch_op.create_index("ix_physical_device_concentrator_id", ["concentrator_id"], unique=False)
        batch_op.drop_index("ix_physical_device_concentrator_key")
