"""Reading the hub the way enterprise (61968-9) queries ask: many metering points at once, by any
of their identifiers, with every register's series and quality, and the registers' OBIS names.

The 61968-9 edge names metering points by UsagePoint mRID (the LD_ID) or by device (PD_ID, serial,
or the physical device key); this service resolves those, reads usage history for a window in one
query per chunk of LD_IDs, and adds quality flags that partners report with the readings they
push (the stored values themselves go through :meth:`CollectionService.ingest_reads`).

:meth:`CimReadService.transaction` holds one transaction across the steps of a message that is
stored while it is still being read, so the edge can roll all of it back when the message's tail
turns out invalid.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import DateTime, String, bindparam, false, func, or_, select, type_coerce
from sqlalchemy.engine import Dialect

from hub.db import Database, UTCDateTime, utcnow
from hub.model import Concentrator, LogicalDevice, LogicalDeviceType, ParameterGroupItem, PhysicalDevice
from hub.services.transaction import Transaction
from hub.services.usage_writer import USAGE, utc

CHUNK = 500
MAX_WINDOW = timedelta(days=31)
TIME_MEMO = 65_536
"""Distinct stored timestamps kept converted (about 3.7 years of 30-minute slots): every metering
point's rows sit on the same grid, so answers for many meters, and repeated ones, share them."""


@dataclass(frozen=True, slots=True)
class MeteringPoint:
    """An installed logical device and the physical device it is on."""

    ld_id: str
    device_key: int
    pd_id: str | None
    serial: str | None
    group_id: int


@dataclass(frozen=True, slots=True)
class RegisterInfo:
    sub_number: int
    obis: str
    unit: str
    kind: str  # cumulative | instantaneous | maximum


class SeriesRow(NamedTuple):
    """One usage row as an answer shows it (a tuple: a month of one meter is about 1,500 of them,
    built per query)."""

    sub_number: int
    measured_time: datetime
    register_value: float | None
    increment: float | None  # effective: recollected_increment when set, else increment
    quality: int
    status: str


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _first(row: Any) -> Any:
    return row[0]


@functools.lru_cache(maxsize=4)
def _time_reader(dialect: Dialect) -> Callable[[Any], datetime]:
    """Stored timestamp as the driver returns it (text on SQLite) -> aware UTC datetime, as
    :class:`hub.db.UTCDateTime` reads it, memoised over :data:`TIME_MEMO` distinct values."""
    process = DateTime(timezone=True).dialect_impl(dialect).result_processor(dialect, None)

    @functools.lru_cache(maxsize=TIME_MEMO)
    def read(raw: Any) -> datetime:
        value = process(raw) if process is not None else raw
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    return read


class CimReadService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def transaction(self) -> Transaction:
        """A transaction for the steps of one message (see the module docstring)."""
        return Transaction(self.db)

    def resolve(self, by_ld: Iterable[str] = (), by_device: Iterable[str] = ()) -> tuple[list[MeteringPoint], list[str]]:
        """Metering points named by LD_ID (``by_ld``) or by device (``by_device``: PD_ID, serial,
        LD_ID, or the physical device key in decimal); returns them in first-named order and the
        names that matched nothing installed."""
        by_ld, by_device = list(dict.fromkeys(by_ld)), list(dict.fromkeys(by_device))
        found: dict[str, list[MeteringPoint]] = {}
        base = (select(LogicalDevice.ld_id, PhysicalDevice.id, PhysicalDevice.pd_id, PhysicalDevice.serial,
                       LogicalDeviceType.group_id)
                .join(PhysicalDevice, PhysicalDevice.id == LogicalDevice.physical_device_id)
                .join(LogicalDeviceType, LogicalDeviceType.type_id == LogicalDevice.type_id)
                .where(LogicalDevice.ld_id.is_not(None), LogicalDevice.deleted == false()))
        with self.db.session() as s:
            for chunk in _chunks(by_ld):
                for row in s.execute(base.where(LogicalDevice.ld_id.in_(chunk))):
                    found.setdefault(f"ld:{row[0]}", []).append(MeteringPoint(*row))
            for chunk in _chunks(by_device):
                keys = [int(c) for c in chunk if c.isdigit()]
                conds = [PhysicalDevice.pd_id.in_(chunk), PhysicalDevice.serial.in_(chunk),
                         LogicalDevice.ld_id.in_(chunk)]
                if keys:
                    conds.append(PhysicalDevice.id.in_(keys))
                for row in s.execute(base.where(or_(*conds), PhysicalDevice.deleted == false())):
                    mp = MeteringPoint(*row)
                    for name in {mp.pd_id, mp.serial, mp.ld_id, str(mp.device_key)} & set(chunk):
                        found.setdefault(f"dev:{name}", []).append(mp)
        out: dict[str, MeteringPoint] = {}
        unknown: list[str] = []
        for key in [f"ld:{n}" for n in by_ld] + [f"dev:{n}" for n in by_device]:
            points = found.get(key)
            if not points:
                unknown.append(key.split(":", 1)[1])
            for mp in sorted(points or [], key=lambda p: p.ld_id):
                out.setdefault(mp.ld_id, mp)
        return list(out.values()), unknown

    def on_head_end(self, he_id: int) -> list[MeteringPoint]:
        """The installed, live metering points collected through head-end ``he_id`` (by LD_ID)."""
        query = (select(LogicalDevice.ld_id, PhysicalDevice.id, PhysicalDevice.pd_id, PhysicalDevice.serial,
                        LogicalDeviceType.group_id)
                 .join(PhysicalDevice, PhysicalDevice.id == LogicalDevice.physical_device_id)
                 .join(LogicalDeviceType, LogicalDeviceType.type_id == LogicalDevice.type_id)
                 .join(Concentrator, Concentrator.id == PhysicalDevice.concentrator_id)
                 .where(Concentrator.he_id == he_id, LogicalDevice.ld_id.is_not(None),
                        LogicalDevice.deleted == false(), PhysicalDevice.deleted == false())
                 .order_by(LogicalDevice.ld_id))
        with self.db.session() as s:
            return [MeteringPoint(*row) for row in s.execute(query)]

    def registers(self, group_ids: Iterable[int]) -> dict[int, list[RegisterInfo]]:
        """The registers of each parameter group, by sub number."""
        wanted = sorted(set(group_ids))
        out: dict[int, list[RegisterInfo]] = {g: [] for g in wanted}
        with self.db.session() as s:
            for item in s.scalars(select(ParameterGroupItem).where(ParameterGroupItem.group_id.in_(wanted))
                                  .order_by(ParameterGroupItem.group_id, ParameterGroupItem.sub_number)):
                out[item.group_id].append(RegisterInfo(item.sub_number, item.obis, item.unit, item.kind))
        return out

    def series(self, ld_ids: Sequence[str], start: datetime, end: datetime,
               sub_numbers: Iterable[int] | None = None) -> dict[str, list[SeriesRow]]:
        """Usage rows of ``ld_ids`` with ``start <= measured_time < end`` (at most 31 days), in time
        order; only registers ``sub_numbers`` when given.

        One query per chunk of LD_IDs, on the primary key (ld_id, sub_number, measured_time): with
        the sub numbers named, each register's window is one index range rather than the metering
        point's whole history. Read on :meth:`Database.reader` (no transaction round trips; one
        generic plan on a server). Rows are fetched at once; their timestamps come as the driver gives
        them and are converted by :func:`_time_reader` (as :class:`hub.db.UTCDateTime` would, once
        per distinct value)."""
        if end <= start:
            raise ValueError("the end of the window must be after its start")
        if end - start > MAX_WINDOW:
            raise ValueError(f"the window may span at most {MAX_WINDOW.days} days")
        c = USAGE.c
        subs = sorted(set(sub_numbers)) if sub_numbers is not None else None
        out: dict[str, list[SeriesRow]] = {ld: [] for ld in ld_ids}
        if subs == []:
            return out
        cols = (c.ld_id, c.sub_number, type_coerce(c.measured_time, String), c.register_value,
                func.coalesce(c.recollected_increment, c.increment), c.quality, c.status)
        when = _time_reader(self.db.engine.dialect)
        with self.db.reader() as conn:
            for chunk in _chunks(list(ld_ids)):
                q = (select(*cols)
                     .where(c.ld_id.in_(chunk), c.measured_time >= utc(start), c.measured_time < utc(end))
                     .order_by(c.ld_id, c.sub_number, c.measured_time))
                if subs is not None:
                    q = q.where(c.sub_number.in_(subs))
                for ld, rows in itertools.groupby(conn.execute(q).all(), key=_first):
                    out[ld] += [SeriesRow(sub, when(t), value, inc, quality, status)
                                for _, sub, t, value, inc, quality, status in rows]
        return out

    def add_quality(self, flags: Sequence[tuple[str, int, datetime, int]], within: Transaction | None = None) -> int:
        """OR quality bits into stored rows (ld_id, sub_number, measured_time, bits); rows that do
        not exist are left alone. Returns how many keys were given a flag. In the open transaction
        ``within`` when given, else in one of its own."""
        rows = [{"k_ld": ld, "k_sub": sub, "k_t": utc(t), "bits": bits, "now": utcnow()}
                for ld, sub, t, bits in flags if bits]
        if not rows:
            return 0
        c = USAGE.c
        stmt = (USAGE.update()
                .where(c.ld_id == bindparam("k_ld"), c.sub_number == bindparam("k_sub"),
                       c.measured_time == bindparam("k_t", type_=UTCDateTime))
                .values(quality=c.quality.op("|")(bindparam("bits")),
                        updated_at=bindparam("now", type_=UTCDateTime)))
        if within is not None:
            within.conn.execute(stmt, rows)
            return len(rows)
        with self.db.session() as s:
            s.connection().execute(stmt, rows)
        return len(rows)

    def device(self, names: Iterable[str]) -> tuple[int, str | None] | None:
        """(key, PD_ID) of the live physical device named by any of ``names`` (PD_ID, serial, key,
        or the LD_ID of one of its logical devices); None when none matches."""
        names = [n for n in names if n]
        if not names:
            return None
        keys = [int(n) for n in names if n.isdigit()]
        with self.db.session() as s:
            conds = [PhysicalDevice.pd_id.in_(names), PhysicalDevice.serial.in_(names)]
            if keys:
                conds.append(PhysicalDevice.id.in_(keys))
            row = s.execute(select(PhysicalDevice.id, PhysicalDevice.pd_id)
                            .where(or_(*conds), PhysicalDevice.deleted == false()).order_by(PhysicalDevice.id)).first()
            if row is None:
                row = s.execute(select(PhysicalDevice.id, PhysicalDevice.pd_id)
                                .join(LogicalDevice, LogicalDevice.physical_device_id == PhysicalDevice.id)
                                .where(LogicalDevice.ld_id.in_(names), PhysicalDevice.deleted == false())).first()
            return (row[0], row[1]) if row else None
