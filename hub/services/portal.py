"""The customer portal's data API (the seed's VPS, 003 §2.4.4-2.4.5): accounts registered from
customer data, visual history of the account's metering points, ADR policies with the seed's rule,
ADR history, and display-terminal (VPA) binding.

Policy rule (003 §2.4.5): the portal (an account with edit rights) may add, edit, deactivate,
reactivate and delete policies; a display terminal may add policies and deactivate them, nothing else
(to change a policy from a terminal, deactivate it and add a new one).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import exists, func, or_, select

from hub.db import Database, utcnow
from hub.model import AdrAction, AdrEvent, AdrPolicy, CustomerLogicalDevice, DisplayTerminal, PortalAccount
from hub.services.access import (
    EMAIL_PATTERN,
    PORTAL_EDIT,
    PORTAL_READ,
    TERMINAL,
    AccessService,
    AccountIn,
    Caller,
    Forbidden,
    check_customer,
    sha256,
)
from hub.services.errors import Conflict, InvalidInput, NotFound
from hub.services.public import Period, PublicDataService, SeriesQuery, iso

ADMIN = "portal:admin"


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, max_length=256, pattern=EMAIL_PATTERN, description="new e-mail address")


class AccountAdminPatch(AccountPatch):
    edit_rights: bool | None = None
    state: str | None = Field(None, pattern=r"^(active|disabled)$", description="disable or re-enable (unlocks)")


class PolicyIn(BaseModel):
    """One register's answer to curtailment requests (fields of the ADR policy)."""

    model_config = ConfigDict(extra="forbid")
    ld_id: str = Field(min_length=1, max_length=64)
    sub_number: int = Field(1, ge=0, le=65535)
    signal_levels: list[int] = Field(default_factory=list, max_length=16)
    signal_names: list[str] = Field(default_factory=list, max_length=16)
    reduced_amps: int | None = Field(None, ge=0, le=1000)
    reduction_step_amps: int | None = Field(None, ge=1, le=1000)
    days_of_week: list[int] = Field(default_factory=lambda: list(range(7)), max_length=7)
    hour_from: int = Field(0, ge=0, le=23)
    hour_to: int = Field(24, ge=1, le=24)
    min_notice_minutes: int = Field(0, ge=0, le=10080)
    max_events_per_month: int | None = Field(None, ge=0, le=1000)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyIn:
        if self.hour_to <= self.hour_from:
            raise ValueError("hour_to must be after hour_from")
        if any(d < 0 or d > 6 for d in self.days_of_week):
            raise ValueError("days_of_week are 0 (Monday) to 6 (Sunday)")
        if self.reduced_amps is None and self.reduction_step_amps is None:
            raise ValueError("give reduced_amps or reduction_step_amps")
        return self


class PolicyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    signal_levels: list[int] | None = Field(None, max_length=16)
    signal_names: list[str] | None = Field(None, max_length=16)
    reduced_amps: int | None = Field(None, ge=0, le=1000)
    reduction_step_amps: int | None = Field(None, ge=1, le=1000)
    days_of_week: list[int] | None = Field(None, max_length=7)
    hour_from: int | None = Field(None, ge=0, le=23)
    hour_to: int | None = Field(None, ge=1, le=24)
    min_notice_minutes: int | None = Field(None, ge=0, le=10080)
    max_events_per_month: int | None = Field(None, ge=0, le=1000)


class TerminalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terminal_id: str = Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9-]+$")
    name: str | None = Field(None, max_length=128)
    ld_id: str | None = Field(None, max_length=64)


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None


def account_view(a: PortalAccount) -> dict[str, Any]:
    return {"account_id": a.id, "user_id": a.user_id, "customer_id": a.customer_id, "edit_rights": a.edit_rights,
            "state": a.state, "temporary_password_expires_at": iso(a.temp_password_expires_at)
            if a.temp_password_expires_at else None, "created_at": iso(a.created_at)}


def policy_view(p: AdrPolicy) -> dict[str, Any]:
    return {"policy_id": p.id, "ld_id": p.ld_id, "sub_number": p.sub_number, "active": p.active,
            "signal_levels": p.signal_levels, "signal_names": p.signal_names, "reduced_amps": p.reduced_amps,
            "reduction_step_amps": p.reduction_step_amps, "days_of_week": p.days_of_week,
            "hour_from": p.hour_from, "hour_to": p.hour_to, "min_notice_minutes": p.min_notice_minutes,
            "max_events_per_month": p.max_events_per_month, "created_by": p.created_by,
            "updated_at": iso(p.updated_at)}


class PortalService:
    def __init__(self, db: Database, access: AccessService, public: PublicDataService) -> None:
        self.db = db
        self.access = access
        self.public = public

    # --- accounts -----------------------------------------------------------------------------
    def register(self, caller: Caller, data: AccountIn) -> dict[str, Any]:
        """A new account for an existing customer (called by the portal back end)."""
        caller.require(ADMIN)
        with self.db.session() as s:
            check_customer(s, data.customer_id)
            if s.scalars(select(PortalAccount.id).where(
                    func.lower(PortalAccount.user_id) == data.user_id.lower(),
                    PortalAccount.deleted.is_(False))).first():
                raise Conflict.on("user_id", "an account with this user ID already exists")
            row = PortalAccount(user_id=data.user_id, customer_id=data.customer_id, edit_rights=data.edit_rights,
                                password_hash=self.access.hash_password(data.password), state="active")
            s.add(row)
            s.flush()
            return account_view(row)

    def admin_edit(self, caller: Caller, user_id: str, patch: AccountAdminPatch) -> dict[str, Any]:
        caller.require(ADMIN)
        with self.db.session() as s:
            row = s.scalars(select(PortalAccount).where(func.lower(PortalAccount.user_id) == user_id.lower(),
                                                        PortalAccount.deleted.is_(False))).first()
            if row is None:
                raise NotFound.on("user_id", "no such account")
            self._apply(s, row, patch)
            if patch.edit_rights is not None:
                row.edit_rights = patch.edit_rights
            if patch.state is not None:
                row.state, row.failed_logins = patch.state, 0
            return account_view(row)

    def _apply(self, s: Any, row: PortalAccount, patch: AccountPatch) -> None:
        if patch.user_id and patch.user_id.lower() != row.user_id.lower():
            if s.scalars(select(PortalAccount.id).where(func.lower(PortalAccount.user_id) == patch.user_id.lower(),
                                                        PortalAccount.deleted.is_(False))).first():
                raise Conflict.on("user_id", "an account with this user ID already exists")
            row.user_id = patch.user_id

    def me(self, caller: Caller) -> dict[str, Any]:
        self._reader(caller)
        with self.db.session() as s:
            row = s.get(PortalAccount, caller.account_id)
            return {**account_view(row), "logical_devices": self._lds(s, row.customer_id)}

    def edit_me(self, caller: Caller, patch: AccountPatch) -> dict[str, Any]:
        self._editor(caller)
        with self.db.session() as s:
            row = s.get(PortalAccount, caller.account_id)
            self._apply(s, row, patch)
            return account_view(row)

    @staticmethod
    def _lds(s: Any, customer_id: str, at: datetime | None = None) -> list[str]:
        r = CustomerLogicalDevice
        now = at or utcnow()
        return sorted(set(s.scalars(select(r.ld_id).where(
            r.customer_id == customer_id, r.deleted.is_(False),
            or_(r.valid_from.is_(None), r.valid_from <= now), or_(r.valid_to.is_(None), r.valid_to > now)))))

    # --- rights -------------------------------------------------------------------------------
    @staticmethod
    def _reader(caller: Caller) -> None:
        if caller.kind not in ("account", "terminal"):
            raise Forbidden("the portal API is for portal accounts and display terminals")
        caller.require(PORTAL_READ)

    def _editor(self, caller: Caller) -> None:
        self._reader(caller)
        if caller.kind != "account":
            raise Forbidden("a display terminal may not do this")
        caller.require(PORTAL_EDIT)

    def _customer(self, caller: Caller) -> str:
        return next(iter(caller.customer_ids))

    # --- visual history -----------------------------------------------------------------------
    def usage(self, caller: Caller, q: SeriesQuery) -> dict[str, Any]:
        """Usage and quote history (estimated charges, corrections from reconciliation) per slot, day
        or month, of the metering points while they were the account's."""
        self._reader(caller)
        return self.public.customer_series(caller, self._customer(caller), q, with_quotes=True)

    # --- ADR policies -------------------------------------------------------------------------
    def policies(self, caller: Caller) -> list[dict[str, Any]]:
        self._reader(caller)
        with self.db.session() as s:
            lds = self._lds(s, self._customer(caller))
            rows = s.scalars(select(AdrPolicy).where(AdrPolicy.ld_id.in_(lds), AdrPolicy.deleted.is_(False))
                             .order_by(AdrPolicy.id))
            return [policy_view(p) for p in rows]

    def add_policy(self, caller: Caller, data: PolicyIn) -> dict[str, Any]:
        """Portal accounts with edit rights and display terminals may add."""
        self._reader(caller)
        if caller.kind == "account":
            caller.require(PORTAL_EDIT)
        with self.db.session() as s:
            if data.ld_id not in self._lds(s, self._customer(caller)):
                raise Forbidden("that metering point is not the account's")
            row = AdrPolicy(**data.model_dump(), created_by="portal" if caller.kind == "account" else "terminal")
            s.add(row)
            s.flush()
            return policy_view(row)

    def _policy(self, s: Any, caller: Caller, policy_id: int) -> AdrPolicy:
        row = s.get(AdrPolicy, policy_id)
        if row is None or row.deleted or row.ld_id not in self._lds(s, self._customer(caller)):
            raise NotFound.on("policy_id", f"policy {policy_id} does not exist")
        return row

    def edit_policy(self, caller: Caller, policy_id: int, patch: PolicyPatch) -> dict[str, Any]:
        """A terminal may only set ``active`` to false; everything else is the portal's."""
        self._reader(caller)
        changes = patch.model_dump(exclude_unset=True)
        if caller.kind == "terminal":
            if set(changes) != {"active"} or changes["active"] is not False:
                raise Forbidden("a display terminal may only deactivate a policy; deactivate it and add a new one")
        else:
            caller.require(PORTAL_EDIT)
        if not changes:
            raise InvalidInput("nothing to change")
        with self.db.session() as s:
            row = self._policy(s, caller, policy_id)
            merged = {k: v for k, v in {**policy_view(row), **changes}.items() if k in PolicyIn.model_fields}
            try:
                PolicyIn.model_validate(merged)
            except ValidationError as exc:
                raise InvalidInput("the policy would be inconsistent: " + "; ".join(
                    err["msg"] for err in exc.errors())) from None
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            return policy_view(row)

    def delete_policy(self, caller: Caller, policy_id: int) -> None:
        """Logical delete; the portal's alone."""
        self._editor(caller)
        with self.db.session() as s:
            row = self._policy(s, caller, policy_id)
            row.deleted, row.deleted_at, row.active = True, utcnow(), False

    # --- ADR history --------------------------------------------------------------------------
    def adr_history(self, caller: Caller, q: HistoryQuery) -> dict[str, Any]:
        """Events that touched the account's metering points and the actions taken on them, while the
        points were the account's (a later holder's events are not the earlier one's history)."""
        self._reader(caller)
        a, e, r = AdrAction, AdrEvent, CustomerLogicalDevice
        with self.db.session() as s:
            held = exists(select(r.ld_id).where(
                r.ld_id == a.ld_id, r.customer_id == self._customer(caller), r.deleted.is_(False),
                or_(r.valid_from.is_(None), r.valid_from <= a.directed_at),
                or_(r.valid_to.is_(None), r.valid_to > a.directed_at)).correlate(a))
            stmt = select(a, e).join(e, e.id == a.adr_event_id).where(held)
            if q.from_:
                stmt = stmt.where(a.directed_at >= q.from_)
            if q.to:
                stmt = stmt.where(a.directed_at < q.to)
            events: dict[int, dict[str, Any]] = {}
            for action, event in s.execute(stmt.order_by(e.dtstart, a.id)):
                ev = events.setdefault(event.id, {
                    "event_id": event.event_id, "modification_number": event.modification_number,
                    "status": event.status, "start": iso(event.dtstart) if event.dtstart else None,
                    "duration_seconds": event.duration_seconds, "actions": []})
                ev["actions"].append({"ld_id": action.ld_id, "policy_id": action.policy_id, "state": action.state,
                                      "start_at": iso(action.start_at) if action.start_at else None,
                                      "end_at": iso(action.end_at) if action.end_at else None,
                                      "reduced_amps": action.reduced_amps, "restore_amps": action.restore_amps})
            return {"items": list(events.values())}

    # --- display terminals --------------------------------------------------------------------
    def bind_terminal(self, caller: Caller, data: TerminalIn) -> dict[str, Any]:
        """Bind a display terminal; its key (``mdt_...``) is returned once."""
        self._editor(caller)
        key = f"mdt_{data.terminal_id}.{secrets.token_urlsafe(32)}"
        with self.db.session() as s:
            if data.ld_id is not None and data.ld_id not in self._lds(s, self._customer(caller)):
                raise Forbidden("that metering point is not the account's")
            row = s.get(DisplayTerminal, data.terminal_id)
            if row is not None and not row.deleted and row.account_id != caller.account_id:
                raise Conflict.on("terminal_id", "the terminal is bound to another account")
            if row is None:
                row = DisplayTerminal(terminal_id=data.terminal_id)
                s.add(row)
            row.account_id, row.ld_id, row.name, row.app_state = caller.account_id, data.ld_id, data.name, "bound"
            row.common_key, row.deleted, row.deleted_at = "sha256:" + sha256(key), False, None
            return {"terminal_id": row.terminal_id, "name": row.name, "ld_id": row.ld_id, "key": key}

    def terminals(self, caller: Caller) -> list[dict[str, Any]]:
        self._reader(caller)
        with self.db.session() as s:
            rows = s.scalars(select(DisplayTerminal).where(DisplayTerminal.account_id == caller.account_id,
                                                           DisplayTerminal.deleted.is_(False)))
            return [{"terminal_id": t.terminal_id, "name": t.name, "ld_id": t.ld_id, "state": t.app_state}
                    for t in rows]

    def unbind_terminal(self, caller: Caller, terminal_id: str) -> None:
        self._editor(caller)
        with self.db.session() as s:
            row = s.get(DisplayTerminal, terminal_id)
            if row is None or row.deleted or row.account_id != caller.account_id:
                raise NotFound.on("terminal_id", f"terminal {terminal_id} is not bound to this account")
            row.deleted, row.deleted_at, row.common_key, row.app_state = True, utcnow(), None, "unbound"


__all__ = ["AccountAdminPatch", "AccountPatch", "HistoryQuery", "Period", "PolicyIn", "PolicyPatch",
           "PortalService", "TerminalIn", "TERMINAL"]
