"""Device search (the seed's 機器情報検索): logical and physical devices by any mix of topology,
identity and state, one page at a time.

Searches by LD_ID or by CO_ID are the hot path (a billing or asset system asks for one metering
point, or walks one concentrator's meters; a head-end's holding concentrator holds up to 20,000), so:

- A page is one joined query, never a query per row. Statements are built once per *shape* (which
  filters are given) with bound parameters and reused; logical device pages are read as plain rows.
- Order is by table key along the topology: the physical device's key, then the logical device's
  address within it (a meter's metering points stay together). That order is the order of the
  concentrator index, so the first page of a concentrator reads about one page of rows, however
  many devices it holds; ordering by the logical device's own key would mean sorting all of them.
  (SQLite ends every index entry with the row key, so its index on PD.concentrator_id is in that
  order; PostgreSQL's is only if the index holds the key too: (concentrator_id, id).)
- The total is counted over just the joins the filters need, and only when the page does not tell
  it. Counting stops ``COUNT_AHEAD`` matches past the page: up to there ``total`` is exact
  (``total_exact``); beyond, it is that lower bound. ``exact_total`` asks for the full count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (ColumnElement, FromClause, Select, and_, bindparam, func, literal_column, not_, select,
                        true)
from sqlalchemy.orm import Session

from hub.db import Database
from hub.model import Concentrator, LogicalDevice, PhysicalDevice, PhysicalDeviceComms
from hub.model.base import BUSINESS_KEY_MAX
from hub.services.devices import logical_device_row_views, physical_device_dict, physical_device_view
from hub.services.errors import NotFound
from hub.services.validation import BusinessKey, DeviceId, MacAddress

COUNT_AHEAD = 200
"""How many matches past the requested page are counted before ``total`` becomes a lower bound."""


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    pd_id: DeviceId | None = Field(None, description="PD_ID, exact")
    co_id: DeviceId | None = Field(None, description="the concentrator's CO_ID (HE1, HE2... hold uninstalled devices)")
    he_id: int | None = Field(None, description="head-end of the device's concentrator")
    mac: MacAddress | None = Field(None, description="physical device MAC, 12 hex digits")
    serial: str | None = Field(None, max_length=64, description="physical device serial number")
    config_state: int | None = Field(None, ge=0, le=1, description="physical device: 0 do not poll, 1 poll")
    use_state: str | None = Field(None, pattern="^[NCA]$", description="comms use state: N new, C configured, A active")
    deleted: bool = Field(False, description="true lists disposed devices instead of live ones")
    installed: bool | None = Field(None, description="true: ID set and not disposed; false: the others")
    exact_total: bool = Field(False, description=f"count every match (slow for large results); by default "
                                                 f"counting stops {COUNT_AHEAD} matches past the page")


class LogicalDeviceFilter(_Filter):
    """Logical device search; every filter given must hold (AND)."""

    ld_id: BusinessKey | None = Field(None, description="LD_ID, exact")
    ld_id_prefix: str | None = Field(None, min_length=1, max_length=BUSINESS_KEY_MAX,
                                     description="LD_ID starts with this (case-sensitive)")
    cluster_id: BusinessKey | None = None
    type_id: int | None = Field(None, description="logical device type")
    relay_state: int | None = Field(None, ge=0, le=1, description="1 supply on, 0 supply off")


class PhysicalDeviceFilter(_Filter):
    """Physical device search; every filter given must hold (AND)."""

    type_id: int | None = Field(None, description="physical device type")


@dataclass
class SearchPage:
    items: list[dict[str, Any]]
    total: int
    total_exact: bool

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "total": self.total, "total_exact": self.total_exact}


class SearchService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def logical_devices(self, f: LogicalDeviceFilter, limit: int, offset: int) -> SearchPage:
        """One page of logical devices with their PD_ID, CO_ID and HEID. The read needs no
        transaction: on PostgreSQL the page carries its total in the same statement."""
        shape, params = _shape(f, _LD_SIMPLE, self.db.backend)
        page, count = _ld_statements(shape, self.db.backend, f.exact_total)
        params |= {"limit": limit, "offset": offset, "count_cap": offset + limit + COUNT_AHEAD}
        with (self.db.reader() if _KEYED & set(shape) else self.db.engine.connect()) as conn:
            result = conn.execute(page, params)
            keys, rows = list(result.keys()), result.all()
            counted: int | None = None
            if self.db.backend != "sqlite":
                counted = rows[0][-1] if rows else None
                keys, rows = keys[:-1], [row[:-1] for row in rows]
            items = logical_device_row_views(keys, rows)
            return _page(items, limit, offset, f.exact_total, counted, lambda: conn.execute(count, params).scalar_one())

    def logical_device(self, ld_id: str) -> dict[str, Any]:
        """The logical device with this LD_ID (disposed ones too: the LD_ID stays reserved)."""
        page, _ = _ld_statements(("ld_id",), self.db.backend, True)
        with self.db.reader() as conn:
            result = conn.execute(page, {"ld_id": ld_id, "limit": 1, "offset": 0})
            keys, row = list(result.keys()), result.first()
        if row is None:
            raise NotFound.on("ld_id", f"logical device {ld_id} does not exist")
        if self.db.backend != "sqlite":  # drop the total column
            keys, row = keys[:-1], row[:-1]
        return logical_device_row_views(keys, [row])[0]

    def physical_devices(self, f: PhysicalDeviceFilter, limit: int, offset: int) -> SearchPage:
        """One page of physical devices by key, each with comms (no secrets) and its logical
        devices: three queries whatever the page size, plus the count when the page does not tell it."""
        shape, params = _shape(f, _PD_SIMPLE, self.db.backend)
        page, count = _pd_statements(shape, self.db.backend, f.exact_total)
        params |= {"limit": limit, "offset": offset, "count_cap": offset + limit + COUNT_AHEAD}
        with self.db.session() as s:
            rows = s.execute(page, params).all()
            keys = [pd.id for pd, _ in rows]
            comms, lds = _comms_of(s, keys), _logical_devices_of(s, keys)
            items = [physical_device_dict(pd, co, comms.get(pd.id), lds[pd.id]) for pd, co in rows]
            return _page(items, limit, offset, f.exact_total, None, lambda: s.execute(count, params).scalar_one())

    def physical_device(self, key: int) -> dict[str, Any]:
        with self.db.session() as s:
            return physical_device_view(s, key)


def _page(items: list[dict[str, Any]], limit: int, offset: int, exact: bool, counted: int | None,
          count: Callable[[], int]) -> SearchPage:
    """The page with its total: told by a short page, else counted (or ``counted`` already)."""
    if len(items) < limit and (items or offset == 0):
        return SearchPage(items, offset + len(items), True)
    if counted is None:
        counted = count()
    return SearchPage(items, counted, exact or counted < offset + limit + COUNT_AHEAD)


# statements --------------------------------------------------------------------------------------
LD, PD, CO, COMMS = (m.__table__ for m in (LogicalDevice, PhysicalDevice, Concentrator, PhysicalDeviceComms))

_CO_BY_ID = CO.alias("co_by_id")  # its own name, so it never correlates with a joined concentrator
Condition = tuple[str, Callable[[], ColumnElement[bool]]]  # (table it reads, builder)


def _equals(table: str, column: Any, name: str) -> Condition:
    return table, lambda: column == bindparam(name)


_COMMON: dict[str, Condition] = {
    "pd_id": _equals("pd", PD.c.pd_id, "pd_id"),
    "mac": _equals("pd", PD.c.mac, "mac"),
    "serial": _equals("pd", PD.c.serial, "serial"),
    "config_state": _equals("pd", PD.c.config_state, "config_state"),
    # The concentrator as a value, not a join: the planner then walks PD's concentrator index,
    # whose entries are in key order, instead of starting from the concentrator row.
    "co_id": ("pd", lambda: PD.c.concentrator_id == select(_CO_BY_ID.c.id)
              .where(_CO_BY_ID.c.co_id == bindparam("co_id")).scalar_subquery()),
    "he_id": _equals("co", CO.c.he_id, "he_id"),
    "use_state": ("comms", lambda: COMMS.c.use_state == bindparam("use_state")),  # placed by _comms_conditions
}
_LD_SIMPLE = (*_COMMON, "ld_id", "cluster_id", "type_id", "relay_state")
_PD_SIMPLE = (*_COMMON, "type_id")
_LD_INSTALLED = and_(LD.c.ld_id.is_not(None), LD.c.deleted.is_(False))
_PD_INSTALLED = and_(PD.c.pd_id.is_not(None), PD.c.deleted.is_(False))
_LD_CONDITIONS: dict[str, Condition] = _COMMON | {
    "ld_id": _equals("ld", LD.c.ld_id, "ld_id"),
    "cluster_id": _equals("ld", LD.c.cluster_id, "cluster_id"),
    "type_id": _equals("ld", LD.c.type_id, "type_id"),
    "relay_state": _equals("ld", LD.c.relay_state, "relay_state"),
    "deleted": _equals("ld", LD.c.deleted, "deleted"),
    "installed": ("ld", lambda: _LD_INSTALLED),
    "not_installed": ("ld", lambda: not_(_LD_INSTALLED)),
    # LD_ID prefix: a key range on SQLite (BINARY collation compares code points, so the range is
    # exact and walks the unique index; SQLite's LIKE would ignore case), LIKE on PostgreSQL
    # (case-sensitive and right under any collation).
    "prefix_range": ("ld", lambda: and_(LD.c.ld_id >= bindparam("prefix_lo"), LD.c.ld_id < bindparam("prefix_hi"))),
    "prefix_from": ("ld", lambda: LD.c.ld_id >= bindparam("prefix_lo")),
    "prefix_like": ("ld", lambda: LD.c.ld_id.like(bindparam("prefix_like"), escape="/")),
}
_KEYED = frozenset({"ld_id", "pd_id", "mac", "serial", "co_id"})
"""Filters that confine a search to one device or one concentrator: its plan is the same index
walk whatever the value, so it may be planned once (:meth:`Database.reader`). Others may not: a
generic plan cannot use a LIKE pattern's prefix, and guesses the selectivity of a state or type."""
_LD_DRIVEN = frozenset({"ld_id", "cluster_id", "prefix_range", "prefix_from", "prefix_like"})
"""Filters that find logical devices through an index of their own: such searches start there."""
_PD_CONDITIONS: dict[str, Condition] = _COMMON | {
    "type_id": _equals("pd", PD.c.type_id, "type_id"),
    "deleted": _equals("pd", PD.c.deleted, "deleted"),
    "installed": ("pd", lambda: _PD_INSTALLED),
    "not_installed": ("pd", lambda: not_(_PD_INSTALLED)),
}


def _shape(f: _Filter, simple: tuple[str, ...], backend: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Which conditions the filter needs (the statement's cache key) and the values to bind."""
    params: dict[str, Any] = {"deleted": f.deleted}
    shape = ["deleted"]
    for name in simple:
        value = getattr(f, name)
        if value is not None:
            shape.append(name)
            params[name] = value
    if f.installed is not None:
        shape.append("installed" if f.installed else "not_installed")
    prefix = getattr(f, "ld_id_prefix", None)
    if prefix:
        if backend == "sqlite":
            params["prefix_lo"] = prefix
            upper = _successor(prefix)
            if upper is None:
                shape.append("prefix_from")
            else:
                shape.append("prefix_range")
                params["prefix_hi"] = upper
        else:
            shape.append("prefix_like")
            params["prefix_like"] = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    return tuple(shape), params


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: there is none)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    return stripped[:-1] + chr(0xE000 if 0xD800 <= following <= 0xDFFF else following)  # no lone surrogates


def _conditions(table: dict[str, Condition], shape: tuple[str, ...],
                on: Callable[[str], bool]) -> list[ColumnElement[bool]]:
    return [build() for name in shape for where, build in [table[name]] if on(where)]


def _fenced(query: Select[Any], name: str) -> FromClause:
    """A LATERAL subquery PostgreSQL must run per outer row: OFFSET 0 keeps its planner from
    merging it into the outer join, where it tends to pick a merge join that walks the whole
    table from its first key when a concentrator's devices sit at the end."""
    return query.offset(literal_column("0")).lateral(name)


_COMMS_STATE = _fenced(select(COMMS.c.use_state).where(COMMS.c.physical_device_id == PD.c.id), "comms_state")


def _around_pd(base: FromClause, shape: tuple[str, ...], table: dict[str, Condition], backend: str,
               *, co: bool) -> FromClause:
    """``base`` (which holds PD) joined to its concentrator (when shown or filtered on) and, for a
    use-state filter, to its comms row, probed per device on PostgreSQL."""
    reads = {table[name][0] for name in shape}
    if co or "co" in reads:
        base = base.join(CO, CO.c.id == PD.c.concentrator_id)
    if "comms" in reads:
        if backend == "sqlite":
            base = base.join(COMMS, COMMS.c.physical_device_id == PD.c.id)
        else:
            base = base.join(_COMMS_STATE, true())
    return base


def _comms_conditions(shape: tuple[str, ...], backend: str) -> list[ColumnElement[bool]]:
    """The use-state filter: on the comms table on SQLite, on the fenced subquery elsewhere."""
    if "use_state" not in shape:
        return []
    column = COMMS.c.use_state if backend == "sqlite" else _COMMS_STATE.c.use_state
    return [column == bindparam("use_state")]


def _counted(base: FromClause, where: list[ColumnElement[bool]], exact: bool, order: tuple[Any, ...]) -> Select[Any]:
    """The number of matches; unless ``exact``, it stops at the bound ``count_cap``. The bounded
    count takes matches in page order, so the planner walks the same index as the page does
    rather than guessing that a scan from the table's start finds enough of them soon."""
    matches = select(literal_column("1")).select_from(base).where(*where)
    if not exact:
        matches = matches.order_by(*order).limit(bindparam("count_cap"))
    return select(func.count()).select_from(matches.subquery("matches"))


@lru_cache(maxsize=512)
def _ld_statements(shape: tuple[str, ...], backend: str, exact: bool) -> tuple[Select[Any], Select[Any]]:
    """(page, count) for logical devices; the page shows each one's PD_ID, CO_ID and HEID.

    A search that starts from the physical devices (by concentrator, head-end, state, or none) is
    written for PostgreSQL as a fenced LATERAL subquery per physical device, so its planner walks
    them in key order and stops after one page; SQLite's planner finds that path from the plain
    join. On PostgreSQL the page also carries the count as its last column: a scalar subquery run
    once (an InitPlan), saving a round trip. SQLite may run such a subquery again for every row, so
    there the count is sent on its own, and only when the page does not tell the total."""
    postgres = backend != "sqlite"
    ld_where = _conditions(_LD_CONDITIONS, shape, lambda t: t == "ld")
    pd_where = (_conditions(_LD_CONDITIONS, shape, lambda t: t in ("pd", "co"))
                + _comms_conditions(shape, backend))
    if postgres and not _LD_DRIVEN & set(shape):
        ld = _fenced(select(LD).where(LD.c.physical_device_id == PD.c.id, *ld_where).order_by(LD.c.ld_address), "ld")
        rows, where = PD.join(ld, true()), pd_where
        count_from = _around_pd(rows, shape, _LD_CONDITIONS, backend, co=False)
    else:
        ld, where = LD, ld_where + pd_where
        rows = LD.join(PD, PD.c.id == LD.c.physical_device_id)
        count_from = _around_pd(rows, shape, _LD_CONDITIONS, backend, co=False) if pd_where else LD
    by_device = PD.c.id if count_from is not LD else LD.c.physical_device_id  # same order, no join
    count = _counted(count_from, where, exact, (by_device, ld.c.ld_address))
    columns = [*ld.c, PD.c.pd_id, CO.c.co_id, CO.c.he_id]
    if postgres:
        columns.append(count.correlate(None).scalar_subquery().label("total"))
    page = (select(*columns).select_from(_around_pd(rows, shape, _LD_CONDITIONS, backend, co=True)).where(*where)
            .order_by(PD.c.id, ld.c.ld_address).limit(bindparam("limit")).offset(bindparam("offset")))
    return page, count


@lru_cache(maxsize=512)
def _pd_statements(shape: tuple[str, ...], backend: str, exact: bool) -> tuple[Select[Any], Select[Any]]:
    """(page, count) for physical devices; the page loads each device with its concentrator (the
    comms rows and logical devices of the page follow in one query each)."""
    where = (_conditions(_PD_CONDITIONS, shape, lambda t: t != "comms")
             + _comms_conditions(shape, backend))
    page = (select(PhysicalDevice, Concentrator).select_from(_around_pd(PD, shape, _PD_CONDITIONS, backend, co=True))
            .where(*where).order_by(PD.c.id).limit(bindparam("limit")).offset(bindparam("offset")))
    return page, _counted(_around_pd(PD, shape, _PD_CONDITIONS, backend, co=False), where, exact, (PD.c.id,))


def _comms_of(s: Session, keys: list[int]) -> dict[int, PhysicalDeviceComms]:
    if not keys:
        return {}
    return {c.physical_device_id: c for c in s.scalars(select(PhysicalDeviceComms)
                                                        .where(PhysicalDeviceComms.physical_device_id.in_(keys)))}


def _logical_devices_of(s: Session, keys: list[int]) -> dict[int, list[LogicalDevice]]:
    """The logical devices of a page of physical devices, in one query, by address."""
    found: dict[int, list[LogicalDevice]] = defaultdict(list)
    if keys:
        for ld in s.scalars(select(LogicalDevice).where(LogicalDevice.physical_device_id.in_(keys))
                            .order_by(LogicalDevice.physical_device_id, LogicalDevice.ld_address)):
            found[ld.physical_device_id].append(ld)
    return found
