"""Access control: API clients (apps) with hashed keys and scopes, portal sessions, display-terminal
keys, delivery groups, and the access log an auditor exports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import created_field, ts_field


class ApiClient(SQLModel, table=True):
    """An app that calls the secondary-use APIs. The key is shown once; only its SHA-256 is kept
    (keys are 256-bit random, so a fast hash is enough; passwords use argon2)."""

    __tablename__ = "api_client"
    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(max_length=64, unique=True)
    name: str | None = Field(default=None, max_length=128)
    key_prefix: str = Field(max_length=16, unique=True, description="public part of the key, for lookup")
    key_hash: str = Field(max_length=64)
    scopes: list[str] = Field(default_factory=list, sa_type=JSON)
    ip_allow: list[str] = Field(default_factory=list, sa_type=JSON, description="CIDRs; empty allows any")
    groups: list[str] | None = Field(default=None, sa_type=JSON,
                                     description="cluster:<id> / area:<name> it may see; null means all")
    customer_ids: list[str] = Field(default_factory=list, sa_type=JSON,
                                    description="customers whose own series it has the right to")
    delivery_groups: list[str] = Field(default_factory=list, sa_type=JSON)
    rate_per_minute: int | None = None
    active: bool = True
    expires_at: datetime | None = ts_field()
    created_at: datetime = created_field()


class PortalSession(SQLModel, table=True):
    """A portal login; ``must_change`` sessions (temporary password) may only change the password."""

    __tablename__ = "portal_session"
    token_hash: str = Field(primary_key=True, max_length=64)
    account_id: int = Field(foreign_key="portal_account.id", index=True)
    must_change: bool = False
    expires_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = created_field()


class DeliveryGroup(SQLModel, table=True):
    """A set of customers whose 30-minute energy goes into one daily CSV file."""

    __tablename__ = "delivery_group"
    group_id: str = Field(primary_key=True, max_length=64)
    name: str | None = Field(default=None, max_length=128)
    customer_ids: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = created_field()


class AccessLog(SQLModel, table=True):
    """One row per request to an authenticated edge: who, what, when, result."""

    __tablename__ = "access_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    principal_kind: str = Field(max_length=16, description="client | account | terminal | anonymous")
    principal: str | None = Field(default=None, max_length=256, index=True)
    edge: str = Field(max_length=16, description="rest | soap | portal | delivery")
    method: str = Field(max_length=16)
    resource: str = Field(max_length=512)
    result: int = Field(description="HTTP status (SOAP faults are 500)")
    detail: str | None = Field(default=None, max_length=512)
    remote: str | None = Field(default=None, max_length=64)
