"""Who is calling: API clients (keys, scopes, IP allow-list, rate limit), portal accounts (argon2
passwords, temporary passwords, lock after repeated failures), display terminals; and the access log.

Every edge resolves its caller here through :meth:`AccessService.resolve`, so the rules are the same
on REST, SOAP, the portal API and file delivery. Credentials are opaque strings with a kind prefix:
``mdk_<prefix>.<secret>`` (API client), ``mds_<token>`` (portal session), ``mdt_<prefix>.<secret>``
(display terminal). Only hashes are stored.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, select

from hub.config import AccessSection
from hub.db import Database, utcnow
from hub.model import AccessLog, ApiClient, Customer, DisplayTerminal, PortalAccount, PortalSession
from hub.services.errors import Conflict, InvalidInput, NotFound, ServiceError

log = logging.getLogger("mdmhub.access")

SCOPES = {
    "public:read": "aggregates, DR summaries and data-quality summaries (no identifiers)",
    "customer:read": "series of the customers listed on the client",
    "delivery:read": "daily CSV files of the client's customers and delivery groups",
    "portal:admin": "the portal back end: register accounts, issue temporary passwords",
    "access:admin": "manage API clients and export the access log",
    "ops:read": "the operations dashboard (meter states, fleet energy, alerts, collection health, DR events)",
}
PORTAL_EDIT = "portal:edit"  # held by accounts with edit rights
PORTAL_READ = "portal:read"
TERMINAL = "terminal"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
_GENERIC_LOGIN_ERROR = "unknown user ID or wrong password, or the account cannot log in"


class Unauthenticated(ServiceError):
    """No credential, or one that does not identify a caller (401)."""


class Forbidden(ServiceError):
    """The caller is known but may not do this (403)."""


@dataclass
class RateLimited(ServiceError):
    """Too many requests in the client's window (429)."""

    retry_after: float = 1.0


@dataclass(frozen=True)
class Caller:
    """The authenticated party of one request, as every service sees it."""

    kind: str  # client | account | terminal
    principal: str  # client_id, the account's e-mail, or the terminal ID
    scopes: frozenset[str] = frozenset()
    groups: tuple[str, ...] | None = None  # cluster:<id> / area:<name>; None = every group
    customer_ids: frozenset[str] = frozenset()
    delivery_groups: frozenset[str] = frozenset()
    account_id: int | None = None
    terminal_id: str | None = None
    must_change_password: bool = False

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, scope: str) -> None:
        if self.must_change_password:
            raise Forbidden("the temporary password must be changed before anything else")
        if scope not in self.scopes:
            raise Forbidden(f"this credential lacks the scope {scope}")


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    name: str | None = Field(None, max_length=128)
    scopes: list[str] = Field(min_length=1)
    ip_allow: list[str] = Field(default_factory=list, description="CIDRs or addresses; empty allows any")
    groups: list[str] | None = Field(None, description="cluster:<id> / area:<name>; null means all groups")
    customer_ids: list[str] = Field(default_factory=list)
    delivery_groups: list[str] = Field(default_factory=list)
    rate_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    expires_at: AwareDatetime | None = None

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}")
        return sorted(set(value))

    @field_validator("ip_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=False)) for v in value]

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not g.startswith(("cluster:", "area:")) for g in value):
            raise ValueError("groups are cluster:<id> or area:<name>")
        return value


class ClientPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool | None = None
    scopes: list[str] | None = None
    ip_allow: list[str] | None = None
    rate_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    expires_at: AwareDatetime | None = None

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else ClientIn._known_scopes(value)

    @field_validator("ip_allow")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else ClientIn._networks(value)


class AccessLogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None
    principal: str | None = Field(None, max_length=256)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _split_key(credential: str, kind: str) -> tuple[str, str] | None:
    body = credential[len(kind):]
    prefix, dot, secret = body.partition(".")
    if not dot or not prefix or not secret or len(prefix) > 16:
        return None
    return prefix, secret


class RateLimiter:
    """A token bucket per client (per process): ``rate`` requests per minute, bursts up to that."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.clock = clock

    def take(self, key: str, per_minute: int) -> float:
        """0 when allowed, else seconds until the next request would be."""
        now = self.clock()
        rate = per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


def client_view(c: ApiClient) -> dict[str, Any]:
    return {"client_id": c.client_id, "name": c.name, "scopes": c.scopes, "ip_allow": c.ip_allow,
            "groups": c.groups, "customer_ids": c.customer_ids, "delivery_groups": c.delivery_groups,
            "rate_per_minute": c.rate_per_minute, "active": c.active,
            "expires_at": c.expires_at.isoformat() if c.expires_at else None,
            "key_prefix": c.key_prefix, "created_at": c.created_at.isoformat()}


class AccessService:
    """Credentials, callers and the access log."""

    def __init__(self, db: Database, settings: AccessSection, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.limiter = RateLimiter()
        # argon2id with the library's defaults (RFC 9106 low-memory profile)
        self.hasher = PasswordHasher()

    # --- API clients --------------------------------------------------------------------------
    def create_client(self, data: ClientIn) -> dict[str, Any]:
        """Create a client; the key is returned once and never again."""
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = f"mdk_{prefix}.{secret}"
        with self.db.session() as s:
            if s.scalars(select(ApiClient.id).where(ApiClient.client_id == data.client_id)).first():
                raise Conflict.on("client_id", f"client {data.client_id} already exists")
            row = ApiClient(**data.model_dump(exclude={"expires_at"}), expires_at=data.expires_at,
                            key_prefix=prefix, key_hash=sha256(key))
            s.add(row)
            s.flush()
            return {**client_view(row), "key": key}

    def list_clients(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [client_view(c) for c in s.scalars(select(ApiClient).order_by(ApiClient.client_id))]

    def update_client(self, client_id: str, patch: ClientPatch) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.scalars(select(ApiClient).where(ApiClient.client_id == client_id)).first()
            if row is None:
                raise NotFound.on("client_id", f"client {client_id} does not exist")
            for key, value in patch.model_dump(exclude_unset=True).items():
                setattr(row, key, value)
            s.flush()
            return client_view(row)

    def rotate_key(self, client_id: str) -> dict[str, Any]:
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = f"mdk_{prefix}.{secret}"
        with self.db.session() as s:
            row = s.scalars(select(ApiClient).where(ApiClient.client_id == client_id)).first()
            if row is None:
                raise NotFound.on("client_id", f"client {client_id} does not exist")
            row.key_prefix, row.key_hash = prefix, sha256(key)
            return {**client_view(row), "key": key}

    # --- resolving a caller -------------------------------------------------------------------
    def resolve(self, credential: str | None, remote: str | None) -> Caller:
        """The caller a credential stands for, after every check (expiry, IP allow-list, rate limit).
        Raises Unauthenticated, Forbidden or RateLimited."""
        if not credential:
            raise Unauthenticated("a credential is required (Authorization: Bearer <key>)")
        if credential.startswith("mdk_"):
            return self._client(credential, remote)
        if credential.startswith("mds_"):
            return self._session(credential)
        if credential.startswith("mdt_"):
            return self._terminal(credential)
        raise Unauthenticated("the credential is not recognised")

    def _client(self, key: str, remote: str | None) -> Caller:
        parts = _split_key(key, "mdk_")
        with self.db.session() as s:
            row = parts and s.scalars(select(ApiClient).where(ApiClient.key_prefix == parts[0])).first()
        if not row or not hmac.compare_digest(row.key_hash, sha256(key)):
            raise Unauthenticated("the key is not valid")
        if not row.active:
            raise Unauthenticated("the key has been revoked")
        if row.expires_at is not None and row.expires_at <= self.clock():
            raise Unauthenticated("the key has expired")
        if row.ip_allow and not _allowed(remote, row.ip_allow):
            raise Forbidden(f"requests for this client are not accepted from {remote}")
        wait = self.limiter.take(row.client_id, row.rate_per_minute or self.settings.default_rate_per_minute)
        if wait:
            raise RateLimited(f"rate limit of {row.rate_per_minute or self.settings.default_rate_per_minute} "
                              "requests per minute reached", retry_after=wait)
        return Caller("client", row.client_id, frozenset(row.scopes),
                      tuple(row.groups) if row.groups is not None else None,
                      frozenset(row.customer_ids), frozenset(row.delivery_groups))

    def _session(self, token: str) -> Caller:
        with self.db.session() as s:
            row = s.get(PortalSession, sha256(token))
            if row is None or row.expires_at <= self.clock():
                raise Unauthenticated("the login has expired or does not exist; log in again")
            account = s.get(PortalAccount, row.account_id)
            if account is None or account.deleted or account.state in ("locked", "disabled"):
                raise Unauthenticated("the account can no longer log in")
            scopes = {PORTAL_READ} | ({PORTAL_EDIT} if account.edit_rights else set())
            return Caller("account", account.user_id, frozenset(scopes), None, frozenset({account.customer_id}),
                          account_id=account.id, must_change_password=row.must_change)

    def _terminal(self, key: str) -> Caller:
        parts = _split_key(key, "mdt_")
        with self.db.session() as s:
            row = parts and s.get(DisplayTerminal, parts[0])
            if not row or row.deleted or not row.common_key or row.account_id is None \
                    or not hmac.compare_digest(row.common_key, "sha256:" + sha256(key)):
                raise Unauthenticated("the terminal key is not valid")
            account = s.get(PortalAccount, row.account_id)
            if account is None or account.deleted or account.state in ("locked", "disabled"):
                raise Unauthenticated("the terminal's account can no longer log in")
            return Caller("terminal", row.terminal_id, frozenset({PORTAL_READ, TERMINAL}), None,
                          frozenset({account.customer_id}), account_id=account.id, terminal_id=row.terminal_id)

    # --- portal accounts ----------------------------------------------------------------------
    def hash_password(self, password: str) -> str:
        return self.hasher.hash(password)

    def login(self, user_id: str, password: str) -> dict[str, Any]:
        """A session token for a right user ID and password. Failures never say which was wrong;
        ``lock_after_failures`` failures in a row lock the account."""
        now = self.clock()
        with self.db.session() as s:
            account = s.scalars(select(PortalAccount).where(
                func.lower(PortalAccount.user_id) == user_id.strip().lower(),
                PortalAccount.deleted.is_(False))).first()
            if account is None:
                self.hasher.hash(password)  # same cost as a real check: no timing hint that the user is unknown
                raise Unauthenticated(_GENERIC_LOGIN_ERROR)
            good = self._verify(account.password_hash, password)
            if account.state in ("locked", "disabled"):
                raise Unauthenticated(_GENERIC_LOGIN_ERROR)
            if not good:
                self._count_failure(account.id)  # in its own transaction: this one is rolled back
                raise Unauthenticated(_GENERIC_LOGIN_ERROR)
            must_change = account.state == "temporary"
            if must_change and (account.temp_password_expires_at is None or account.temp_password_expires_at <= now):
                raise Unauthenticated(_GENERIC_LOGIN_ERROR + " (a temporary password expires; ask for a new one)")
            account.failed_logins = 0
            token = "mds_" + secrets.token_urlsafe(32)
            expires = now + timedelta(hours=self.settings.session_hours)
            s.add(PortalSession(token_hash=sha256(token), account_id=account.id, must_change=must_change,
                                expires_at=expires))
            return {"token": token, "expires_at": expires.isoformat(), "must_change_password": must_change}

    def _count_failure(self, account_id: int | None) -> None:
        with self.db.session() as s:
            account = s.get(PortalAccount, account_id, with_for_update=True)
            account.failed_logins += 1
            if account.failed_logins >= self.settings.lock_after_failures:
                account.state = "locked"
                log.warning("portal account locked", extra={"account": account.id})

    def _verify(self, stored: str | None, password: str) -> bool:
        if not stored:
            return False
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def logout(self, token: str) -> None:
        with self.db.session() as s:
            s.execute(delete(PortalSession).where(PortalSession.token_hash == sha256(token)))

    def change_password(self, caller: Caller, current: str, new: str) -> None:
        """Set a new password (the way out of a temporary one); every other login of the account ends."""
        _check_password(new)
        with self.db.session() as s:
            account = s.get(PortalAccount, caller.account_id)
            if account is None or not self._verify(account.password_hash, current):
                raise Forbidden("the current password is wrong")
            if current == new:
                raise InvalidInput.on("new_password", "the new password must differ from the current one")
            account.password_hash = self.hash_password(new)
            account.state, account.temp_password_expires_at, account.failed_logins = "active", None, 0
            s.execute(delete(PortalSession).where(PortalSession.account_id == account.id))

    def issue_temporary_password(self, user_id: str) -> dict[str, Any]:
        """A new random password that must be changed at first login and expires; also unlocks."""
        temp = secrets.token_urlsafe(12)
        expires = self.clock() + timedelta(hours=self.settings.temporary_password_hours)
        with self.db.session() as s:
            account = s.scalars(select(PortalAccount).where(
                func.lower(PortalAccount.user_id) == user_id.strip().lower(),
                PortalAccount.deleted.is_(False))).first()
            if account is None:
                raise NotFound.on("user_id", "no such account")
            if account.state == "disabled":
                raise Conflict.on("user_id", "the account is disabled")
            account.password_hash = self.hash_password(temp)
            account.state, account.temp_password_expires_at, account.failed_logins = "temporary", expires, 0
            s.execute(delete(PortalSession).where(PortalSession.account_id == account.id))
            return {"user_id": account.user_id, "temporary_password": temp, "expires_at": expires.isoformat()}

    # --- access log ---------------------------------------------------------------------------
    def record(self, caller: Caller | None, edge: str, method: str, resource: str, result: int,
               detail: str | None = None, remote: str | None = None, principal: str | None = None) -> None:
        """One access-log row. ``principal`` names an unauthenticated caller's claim (never a secret)."""
        who = caller.principal if caller else principal
        with self.db.session() as s:
            s.add(AccessLog(at=self.clock(), principal_kind=caller.kind if caller else "anonymous",
                            principal=_text(who) if who else None, edge=edge, method=_text(method)[:16],
                            resource=_text(resource)[:512], result=result,
                            detail=_text(detail)[:512] if detail else None,
                            remote=_text(remote)[:64] if remote else None))

    def log_rows(self, q: AccessLogQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        conds = self._log_conds(q)
        with self.db.session() as s:
            total = s.execute(select(func.count()).select_from(AccessLog).where(*conds)).scalar_one()
            rows = s.scalars(select(AccessLog).where(*conds).order_by(AccessLog.id).limit(limit).offset(offset))
            return [_log_item(r) for r in rows], total

    def log_csv(self, q: AccessLogQuery, batch: int = 5000) -> Iterator[str]:
        """The access log as CSV text chunks (header first), in time order, for auditors."""
        conds = self._log_conds(q)
        yield _csv_line(LOG_COLUMNS)
        last = 0
        while True:
            with self.db.session() as s:
                rows = list(s.scalars(select(AccessLog).where(*conds, AccessLog.id > last)
                                      .order_by(AccessLog.id).limit(batch)))
            if not rows:
                return
            yield "".join(_csv_line([_log_item(r)[c] for c in LOG_COLUMNS]) for r in rows)
            last = rows[-1].id or last

    @staticmethod
    def _log_conds(q: AccessLogQuery) -> list[Any]:
        conds: list[Any] = []
        if q.from_:
            conds.append(AccessLog.at >= q.from_)
        if q.to:
            conds.append(AccessLog.at < q.to)
        if q.principal:
            conds.append(AccessLog.principal == q.principal)
        return conds


LOG_COLUMNS = ["id", "at", "principal_kind", "principal", "edge", "method", "resource", "result", "detail", "remote"]


def _log_item(r: AccessLog) -> dict[str, Any]:
    return {"id": r.id, "at": r.at.isoformat(), "principal_kind": r.principal_kind, "principal": r.principal,
            "edge": r.edge, "method": r.method, "resource": r.resource, "result": r.result, "detail": r.detail,
            "remote": r.remote}


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _text(value: str) -> str:
    """A claimed or requested string as the log can hold it: a NUL (which PostgreSQL text cannot
    store, and which a refused request may well carry) is written as ``\\x00``."""
    return value.replace("\x00", "\\x00")


def _allowed(remote: str | None, networks: list[str]) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def _check_password(password: str) -> None:
    if len(password) < 10 or len(password) > 256:
        raise InvalidInput.on("new_password", "a password has 10 to 256 characters")


class AccountIn(BaseModel):
    """Registration from customer data: the customer must exist; the user ID is the e-mail address."""

    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(max_length=256, pattern=EMAIL_PATTERN, description="the e-mail address")
    password: str = Field(min_length=10, max_length=256)
    edit_rights: bool = True


def check_customer(s: Any, customer_id: str) -> Customer:
    customer = s.get(Customer, customer_id)
    if customer is None or customer.deleted:
        raise NotFound.on("customer_id", f"customer {customer_id} does not exist")
    return customer


__all__ = ["AccessService", "AccountIn", "Caller", "ClientIn", "ClientPatch", "Forbidden", "RateLimited",
           "Unauthenticated", "SCOPES"]
