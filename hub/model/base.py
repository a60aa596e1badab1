"""Shared pieces of the canonical model: naming convention, timestamp fields, comms mixin."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime, utcnow

# Stable constraint names, so migrations can alter them on every backend (SQLite batch mode too).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_MAX = 15  # PD_ID and CO_ID: 15-character ASCII in the seed's data model
BUSINESS_KEY_MAX = 64  # LD_ID, customer IDs: keys owned by the billing / customer systems


def ts_field(*, nullable: bool = True, index: bool = False, **kw: Any) -> Any:
    """A timezone-aware UTC timestamp column."""
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index, **kw)


def created_field() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class CommsSettings(SQLModel):
    """Comms settings of a concentrator or physical device (kept in a 1:1 table of its own).

    The split follows the seed: provisioning (DHCP, key exchange) updates these rows while business
    operations update the device row, so the two never contend for the same row.
    ``use_state``: N new, C configured (network provisioning done), A active (keys exchanged).
    """

    ip: str | None = Field(default=None, max_length=45)
    port: int | None = None
    cert_serial: str | None = Field(default=None, max_length=64, index=True)
    password: str | None = Field(default=None, max_length=128)
    common_key: str | None = Field(default=None, max_length=256)
    session_key: str | None = Field(default=None, max_length=256)
    use_state: str = Field(default="N", max_length=1)
    dhcp_done: bool = False
    provisioned: bool = False
    key_updated_at: datetime | None = ts_field()
    collection_start_at: datetime | None = ts_field()
    collection_stop_at: datetime | None = ts_field()
    updated_at: datetime = created_field()
