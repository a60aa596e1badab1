"""Contract cancellation (seed §2.3.6): when an installation is cleared with the cancel flag, the
customer-side records of those metering points are logically deleted, which stops the usage display
and meter ADR for them.

Deleted are, for the given LD_IDs: the customer-LD relations, the display terminals and the ADR
policies. A customer (with their portal accounts and the terminals bound to those accounts) is
deleted only when no live relation to another metering point remains: cancelling one service of a
customer who holds several must not close the others.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import false, or_, select, update
from sqlalchemy.orm import Session

from hub.model import AdrPolicy, Customer, CustomerLogicalDevice, DisplayTerminal, PortalAccount


def cancel_services(s: Session, ld_ids: Collection[str], now: datetime) -> dict[str, Any]:
    """Logically delete what belongs to these LD_IDs in the caller's transaction; returns counts."""
    ld_ids = sorted(set(ld_ids))
    summary: dict[str, Any] = {"ld_ids": ld_ids, "relations": 0, "customers": 0, "portal_accounts": 0,
                               "display_terminals": 0, "adr_policies": 0}
    if not ld_ids:
        return summary
    gone = dict(deleted=True, deleted_at=now)
    customer_ids = set(s.scalars(select(CustomerLogicalDevice.customer_id).where(
        CustomerLogicalDevice.ld_id.in_(ld_ids), CustomerLogicalDevice.deleted == false())))
    summary["relations"] = _count(s.execute(
        update(CustomerLogicalDevice)
        .where(CustomerLogicalDevice.ld_id.in_(ld_ids), CustomerLogicalDevice.deleted == false())
        .values(**gone)))
    keeping = set(s.scalars(select(CustomerLogicalDevice.customer_id).where(
        CustomerLogicalDevice.customer_id.in_(customer_ids), CustomerLogicalDevice.deleted == false())))
    closed = sorted(customer_ids - keeping)
    account_ids: list[int] = []
    if closed:
        summary["customers"] = _count(s.execute(
            update(Customer).where(Customer.customer_id.in_(closed), Customer.deleted == false()).values(**gone)))
        account_ids = list(s.scalars(select(PortalAccount.id).where(
            PortalAccount.customer_id.in_(closed), PortalAccount.deleted == false())))
        if account_ids:
            summary["portal_accounts"] = _count(s.execute(
                update(PortalAccount).where(PortalAccount.id.in_(account_ids)).values(**gone)))
    bound = DisplayTerminal.ld_id.in_(ld_ids)
    if account_ids:
        bound = or_(bound, DisplayTerminal.account_id.in_(account_ids))
    summary["display_terminals"] = _count(s.execute(
        update(DisplayTerminal).where(bound, DisplayTerminal.deleted == false()).values(**gone)))
    summary["adr_policies"] = _count(s.execute(
        update(AdrPolicy).where(AdrPolicy.ld_id.in_(ld_ids), AdrPolicy.deleted == false())
        .values(**gone, updated_at=now)))
    return summary


def _count(result: Any) -> int:
    return int(result.rowcount or 0)
