"""Clusters and tariffs, customers, their metering points, portal accounts and display terminals."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from hub.db import UTCDateTime
from hub.model.base import BUSINESS_KEY_MAX, created_field, ts_field


class CorrectionParameter(SQLModel, table=True):
    """Coefficients, CO2 factor and unit price of one supplier's menu, valid for a period."""

    __tablename__ = "correction_parameter"
    param_id: str = Field(primary_key=True, max_length=64)
    valid_from: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    valid_to: datetime | None = ts_field()
    name: str | None = Field(default=None, max_length=128)
    coefficient: float = 1.0
    co2_factor: float = 0.0
    unit_price: float = 0.0


class Cluster(SQLModel, table=True):
    """A group of metering points supplied from one source (building, district, aggregator...)."""

    __tablename__ = "cluster"
    cluster_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    name: str | None = Field(default=None, max_length=128)
    area: str | None = Field(default=None, max_length=128, index=True)
    param_id: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = created_field()


class Customer(SQLModel, table=True):
    """A utility customer (the seed's UTILITY_CUSTOMER)."""

    __tablename__ = "customer"
    customer_id: str = Field(primary_key=True, max_length=BUSINESS_KEY_MAX)
    name: str | None = Field(default=None, max_length=256)
    address: str | None = Field(default=None, max_length=512)
    email: str | None = Field(default=None, max_length=256)
    phone: str | None = Field(default=None, max_length=64)
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()


class CustomerLogicalDevice(SQLModel, table=True):
    """Which customer held which metering point when (m:n: moves, and customers with many points)."""

    __tablename__ = "customer_logical_device"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: str = Field(foreign_key="customer.customer_id", index=True)
    ld_id: str = Field(max_length=BUSINESS_KEY_MAX, index=True)
    valid_from: datetime | None = ts_field()
    valid_to: datetime | None = ts_field()
    deleted: bool = False
    deleted_at: datetime | None = ts_field()


class PortalAccount(SQLModel, table=True):
    """A customer portal login (user ID = e-mail)."""

    __tablename__ = "portal_account"
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=256, unique=True)
    customer_id: str = Field(foreign_key="customer.customer_id", index=True)
    password_hash: str | None = Field(default=None, max_length=512)
    edit_rights: bool = True
    state: str = Field(default="active", max_length=16, description="active | temporary | locked | disabled")
    temp_password_expires_at: datetime | None = ts_field()
    failed_logins: int = 0
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()


class DisplayTerminal(SQLModel, table=True):
    """A display terminal (the seed's VPA device: set-top box, TV) bound to an account."""

    __tablename__ = "display_terminal"
    terminal_id: str = Field(primary_key=True, max_length=64)
    account_id: int | None = Field(default=None, foreign_key="portal_account.id", index=True)
    ld_id: str | None = Field(default=None, max_length=BUSINESS_KEY_MAX, index=True)
    name: str | None = Field(default=None, max_length=128)
    app_state: str = Field(default="new", max_length=16)
    common_key: str | None = Field(default=None, max_length=256)
    deleted: bool = False
    deleted_at: datetime | None = ts_field()
    created_at: datetime = created_field()
