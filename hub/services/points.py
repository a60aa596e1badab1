"""The IEEE 1888 point registry: which point IDs the hub accepts, what each measures, the canonical
channel (logical device + register) it feeds, and who may write it.

Seed 002: data from unregistered sensor IDs is refused. A point is registered here (through the API
or a mapping file) before any value is stored for it. Writers are named with a credential (HTTP
Basic) and/or source addresses, and an allow-list of point-ID patterns; when no writer is defined
the storage is open to any client for registered points. Readers (FETCH and TRAP) are named the same
way in their own list: with no reader defined any client may read; with readers, only they, and only
their patterns.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from hub.db import Database
from hub.model import FiapPoint
from hub.model.fiap import POINT_ID_MAX
from hub.services.errors import InvalidInput

PointKind = Literal["energy", "power", "temperature", "humidity", "co2", "wind", "rain", "irradiance", "voltage",
                    "current", "mode", "ev-charge-energy"]
NON_NUMERIC_KINDS = frozenset({"mode"})
"""Kinds whose values are free strings (a PCS mode such as ``HIGH``); every other kind is a number."""
_CHUNK = 900


class PointIn(BaseModel):
    """A point to register (or update)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    point_id: str = Field(min_length=1, max_length=POINT_ID_MAX,
                          description="The point's URI, e.g. http://example.org/site/1F/power")
    kind: PointKind
    unit: str | None = Field(None, max_length=16)
    name: str | None = Field(None, max_length=128)
    ld_id: str | None = Field(None, min_length=1, max_length=64, description="Logical device fed (optional)")
    sub_number: int | None = Field(None, ge=0, description="Register of that logical device")

    @field_validator("point_id")
    @classmethod
    def _uri(cls, v: str) -> str:
        if ":" not in v or any(c.isspace() for c in v) or v.endswith("/"):
            raise ValueError("a point ID is a URI (scheme:...) without spaces; a trailing '/' names a pointSet")
        return v

    @model_validator(mode="after")
    def _channel(self) -> PointIn:
        if (self.ld_id is None) != (self.sub_number is None):
            raise ValueError("ld_id and sub_number go together")
        return self

    @property
    def numeric(self) -> bool:
        return self.kind not in NON_NUMERIC_KINDS


@dataclass(frozen=True, slots=True)
class Point:
    """A registered point as the storage needs it."""

    point_id: str
    kind: str
    unit: str | None = None
    name: str | None = None
    ld_id: str | None = None
    sub_number: int | None = None

    @property
    def numeric(self) -> bool:
        return self.kind not in NON_NUMERIC_KINDS

    def as_dict(self) -> dict[str, Any]:
        return {"point_id": self.point_id, "kind": self.kind, "unit": self.unit, "name": self.name,
                "ld_id": self.ld_id, "sub_number": self.sub_number, "numeric": self.numeric}


class WriterIn(BaseModel):
    """A writer (or reader): who it is (credential and/or addresses) and which points it may write
    (or read)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    password_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                        description="SHA-256 (hex) of the HTTP Basic password")
    addresses: list[str] = Field(default_factory=list, description="Allowed source networks, e.g. 10.0.0.0/8")
    points: list[str] = Field(default_factory=lambda: ["*"], description="Point ID patterns (fnmatch)")

    @field_validator("addresses")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_network(a, strict=False)
        return v


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: an optional HTTP Basic user/password and the source address."""

    user: str | None = None
    password: str | None = None
    remote: str | None = None


@dataclass
class Writers:
    """Allow-lists of writers (or, as ``readers``, of readers). Empty: any caller may write (read)
    any registered point."""

    writers: list[WriterIn] = field(default_factory=list)

    def identify(self, caller: Caller) -> WriterIn | None:
        """The writer ``caller`` proves to be (credential first, then address), or None."""
        for w in self.writers:
            if w.password_sha256 and caller.user == w.name and caller.password is not None:
                digest = hashlib.sha256(caller.password.encode()).hexdigest()
                if hmac.compare_digest(digest, w.password_sha256) and self._from(w, caller.remote, empty_ok=True):
                    return w
        for w in self.writers:
            if not w.password_sha256 and w.addresses and self._from(w, caller.remote, empty_ok=False):
                return w
        return None

    @staticmethod
    def _from(w: WriterIn, remote: str | None, *, empty_ok: bool) -> bool:
        if not w.addresses:
            return empty_ok
        try:
            ip = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(a, strict=False) for a in w.addresses)

    def forbidden(self, caller: Caller | None, point_ids: Iterable[str]) -> tuple[str | None, list[str]]:
        """(writer name, the point IDs ``caller`` may not write). ``caller`` None is the hub itself."""
        ids = list(point_ids)
        if caller is None or not self.writers:
            return (None, [])
        w = self.identify(caller)
        if w is None:
            return (None, ids)
        return (w.name, [p for p in ids if not any(fnmatch.fnmatchcase(p, pat) for pat in w.points)])

    def who(self, caller: Caller | None) -> str | None:
        """The name ``caller`` proves (None: the hub itself, an open list, or nobody it knows)."""
        if caller is None or not self.writers:
            return None
        w = self.identify(caller)
        return w.name if w else None

    def allows(self, caller: Caller | None, point_id: str) -> bool:
        return not self.forbidden(caller, [point_id])[1]


class PointService:
    """Register, list and resolve points; decide who may write them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writers = Writers()
        self.readers = Writers()
        """Who may FETCH and TRAP which points (same form as the writers)."""

    # registry ------------------------------------------------------------------------------

    def register(self, points: Sequence[PointIn]) -> dict[str, int]:
        """Insert new points and update the description of known ones (idempotent)."""
        seen: dict[str, PointIn] = {}
        for p in points:
            seen[p.point_id] = p
        rows = [p.model_dump() for p in seen.values()]
        if not rows:
            return {"registered": 0, "updated": 0}
        table = FiapPoint.__table__  # type: ignore[attr-defined]
        with self.db.session() as s:
            known = set(self._known(s, list(seen)))
            dialect = postgresql if self.db.backend == "postgresql" else sqlite
            stmt = dialect.insert(table)
            stmt = stmt.on_conflict_do_update(index_elements=["point_id"], set_={
                c: stmt.excluded[c] for c in ("kind", "unit", "name", "ld_id", "sub_number")})
            for i in range(0, len(rows), _CHUNK):
                s.execute(stmt, rows[i:i + _CHUNK])
        return {"registered": len(rows) - len(known), "updated": len(known)}

    @staticmethod
    def _known(s: Any, ids: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(ids), _CHUNK):
            out += list(s.scalars(select(FiapPoint.point_id).where(FiapPoint.point_id.in_(ids[i:i + _CHUNK]))))
        return out

    def list_points(self, limit: int = 50, offset: int = 0, prefix: str | None = None,
                    kind: str | None = None) -> tuple[list[dict[str, Any]], int]:
        with self.db.session() as s:
            q = select(FiapPoint)
            if prefix:
                q = q.where(FiapPoint.point_id.startswith(prefix, autoescape=True))
            if kind:
                q = q.where(FiapPoint.kind == kind)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(FiapPoint.point_id).limit(limit).offset(offset)).all()
            return [_point(r).as_dict() for r in rows], total

    def resolve(self, point_ids: Iterable[str], conn: Connection | None = None) -> dict[str, Point]:
        """The registered points among ``point_ids`` (unknown IDs are absent). With ``conn``, in
        that connection's transaction (a WRITE resolves its points and stores its values in one)."""
        ids = sorted(set(point_ids))
        if conn is not None:
            return self._resolve(conn, ids)
        with self.db.session() as s:
            return self._resolve(s.connection(), ids)

    @staticmethod
    def _resolve(conn: Connection, ids: list[str]) -> dict[str, Point]:
        table = FiapPoint.__table__  # type: ignore[attr-defined]
        out: dict[str, Point] = {}
        for i in range(0, len(ids), _CHUNK):
            q = select(table.c.point_id, table.c.kind, table.c.unit, table.c.name, table.c.ld_id,
                       table.c.sub_number).where(table.c.point_id.in_(ids[i:i + _CHUNK]))
            for row in conn.execute(q):
                out[row[0]] = Point(*row)
        return out

    def children(self, prefix: str, visible: Callable[[str], bool] | None = None) -> list[tuple[str, bool]]:
        """Direct children of pointSet ``prefix`` (ending in '/'): (id, is_point_set), in order.
        Empty when no registered point lies under it. With ``visible``, only points it accepts
        count (a child pointSet shows when a visible point lies under it)."""
        with self.db.session() as s:
            ids = s.scalars(select(FiapPoint.point_id)
                            .where(FiapPoint.point_id.startswith(prefix, autoescape=True))
                            .order_by(FiapPoint.point_id)).all()
        out: dict[str, bool] = {}
        for pid in ids:
            if visible is not None and not visible(pid):
                continue
            rest = pid[len(prefix):]
            head, sep, _ = rest.partition("/")
            out.setdefault(prefix + head + "/" if sep else pid, bool(sep))
        return list(out.items())

    # mapping files --------------------------------------------------------------------------

    def load_mapping(self, path: Path) -> dict[str, int]:
        """Register the points of a mapping file and replace the writer list with its writers.

        Format (TOML): ``[[point]]`` tables with the fields of :class:`PointIn`, ``[[writer]]`` and
        ``[[reader]]`` tables with those of :class:`WriterIn`. A bad file registers nothing."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput.on("points_file", f"{path}: {exc}") from None
        try:
            points = [PointIn.model_validate(p) for p in data.get("point", [])]
            writers = [WriterIn.model_validate(w) for w in data.get("writer", [])]
            readers = [WriterIn.model_validate(r) for r in data.get("reader", [])]
        except ValidationError as exc:
            raise InvalidInput.on("points_file", f"{path}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
                                  ) from None
        report = self.register(points)
        self.writers = Writers(writers)
        self.readers = Writers(readers)
        return {**report, "writers": len(writers), "readers": len(readers)}


def _point(r: FiapPoint) -> Point:
    return Point(r.point_id, r.kind, r.unit, r.name, r.ld_id, r.sub_number)
