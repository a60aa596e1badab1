"""Storing and reading IEEE 1888 point values (the storage behind /fiap and the hub's client).

WRITE rules (docs/ieee1888.md):

- every point of a WRITE must be registered (seed 002); otherwise nothing is stored, the whole
  WRITE is refused and an alert is raised;
- a caller may only write the points its writer allow-list names;
- values of numeric kinds must be finite numbers; a value without a time takes the hub's clock;
- the same (point, time) with the same value is accepted again and changes nothing; a different
  value for a stored (point, time) is refused (the first value stays), as is a WRITE carrying two
  values for one (point, time). The check is the insert itself, in the WRITE's one transaction, so
  two writers racing on one (point, time) cannot both be told OK (:mod:`hub.services.fiap_values`);
- every accepted value lands in ``fiap_value`` as written; a value of a point mapped to a canonical
  channel (logical device + register) that falls on the 30-minute grid is also stored on the
  readings path (:meth:`CollectionService.ingest_reads`, source ``ieee1888``);
- values of points an upstream forwards are queued in ``fiap_outbox`` in the same transaction, so
  nothing accepted is lost before the upstream has it.
"""

from __future__ import annotations

import fnmatch
import logging
from math import isfinite
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, and_, insert, select, tuple_

from hub.config import Ieee1888Section
from hub.db import Database, utcnow
from hub.model import FiapOutbox, FiapValue
from hub.model.fiap import VALUE_MAX
from hub.ports import SLOT_SECONDS, RegisterRead
from hub.services.alerts import AlertService
from hub.services.diagnosis import AlertDraft
from hub.services.errors import Conflict, InvalidInput, NotFound, ServiceError
from hub.services.fiap_values import Row, ValueInserter
from hub.services.points import Caller, Point, PointService

log = logging.getLogger("mdmhub.ieee1888")
SOURCE = "ieee1888"
UNREGISTERED_CODE = "ieee1888.unregistered-point"
ALERT_EVERY_S = 3600.0
"""One alert per unregistered point per hour: a gateway retrying every minute must not flood the NMS."""
_CHUNK = 900
VALUES: Any = FiapValue.__table__  # type: ignore[attr-defined]
OUTBOX: Any = FiapOutbox.__table__  # type: ignore[attr-defined]

Op = Literal["eq", "neq", "lt", "gt", "lteq", "gteq"]


class UnregisteredPoints(NotFound):
    """A WRITE or FETCH names points the registry does not hold."""

    def __init__(self, point_ids: Sequence[str]) -> None:
        shown = ", ".join(point_ids[:5]) + (f" and {len(point_ids) - 5} more" if len(point_ids) > 5 else "")
        super().__init__(f"unregistered point(s): {shown}")
        self.point_ids = list(point_ids)


class ForbiddenPoints(ServiceError):
    """The caller may not write these points."""

    def __init__(self, writer: str | None, point_ids: Sequence[str]) -> None:
        who = f"writer {writer!r}" if writer else "an unidentified caller"
        super().__init__(f"{who} may not write {', '.join(point_ids[:5])}"
                         + (f" and {len(point_ids) - 5} more" if len(point_ids) > 5 else ""))
        self.point_ids = list(point_ids)


class Sample(NamedTuple):
    """One value of one point; ``time`` None means "now" (aware datetimes otherwise)."""

    point_id: str
    time: datetime | None
    value: str


SampleTuple = tuple[str, datetime | None, str]
"""A :class:`Sample` as a plain tuple (the storage endpoint makes one per value of a WRITE, and a
named tuple costs several times as much to make)."""


@dataclass
class WriteReport:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    forwarded: int = 0
    canonical: dict[str, Any] = field(default_factory=dict)
    new: list[Row] = field(default_factory=list)
    """The values stored: (point, time, value, number), the first three as in a :class:`Sample`."""

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "stored": self.stored, "duplicates": self.duplicates,
                "forwarded": self.forwarded, "canonical": self.canonical}


@dataclass(frozen=True, slots=True)
class Condition:
    op: Op
    bound: datetime | float | str


class FiapStore:
    """WRITE and FETCH over the point registry and the value table."""

    def __init__(self, db: Database, points: PointService, alerts: AlertService,
                 ingest: Callable[..., dict[str, Any]], settings: Ieee1888Section,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.points = points
        self.alerts = alerts
        self._ingest = ingest
        self.settings = settings
        self.clock = clock
        self._alerted: dict[str, float] = {}

    # WRITE -----------------------------------------------------------------------------------

    def write(self, samples: Sequence[SampleTuple], caller: Caller | None = None,
              source: str = SOURCE) -> WriteReport:
        """Store ``samples`` all or nothing (see the module rules): :class:`Sample` or plain
        (point, time, value) tuples. ``caller`` None is the hub itself (fetched values), which
        the writer allow-lists do not restrict.

        One transaction: the points are resolved, the values inserted where no value is stored
        (the insert itself finds the duplicates, :mod:`hub.services.fiap_values`), the skipped
        keys compared with what is stored, and the forwarding queue filled; any refusal rolls it
        all back."""
        report = WriteReport(received=len(samples))
        if not samples:
            return report
        ids = list(dict.fromkeys(s[0] for s in samples))
        now = self.clock()
        try:
            with self.db.session() as s:
                conn = s.connection()
                points = self.points.resolve(ids, conn)
                unknown = [p for p in ids if p not in points]
                if unknown:
                    raise UnregisteredPoints(unknown)
                writer, forbidden = self.points.writers.forbidden(caller, ids)
                if forbidden:
                    raise ForbiddenPoints(writer, forbidden)
                rows = self._rows(samples, points, now)
                new = self._insert(conn, rows, source[:64], now)
                report.forwarded = self._enqueue(conn, new, now)
        except UnregisteredPoints as exc:
            self._alert_unregistered(exc.point_ids, caller, len(samples))
            raise
        report.stored = len(new)
        report.duplicates = len(rows) - len(new)
        if new:
            report.new = new
            report.canonical = self._to_readings(new, points)
        return report

    @staticmethod
    def _rows(samples: Sequence[SampleTuple], points: dict[str, Point], now: datetime) -> list[Row]:
        """Validated rows, one per (point, time), sorted by point and time (the insert's lock order)."""
        zone = now.tzinfo
        numeric = {p: pt.numeric for p, pt in points.items()}
        out: dict[tuple[str, datetime], Row] = {}
        for pid, t, value in samples:
            if t is None:
                t = now
            elif t.tzinfo is not zone:
                if t.tzinfo is None or t.utcoffset() is None:
                    raise InvalidInput.on("time", f"{pid}: time {t.isoformat()} has no time zone")
                if zone is not None:
                    t = t.astimezone(zone)
            if len(value) > VALUE_MAX:
                raise InvalidInput.on("value", f"{pid}: value longer than {VALUE_MAX} characters")
            try:  # the number when the value is a finite one (float() skips surrounding spaces)
                number: float | None = float(value)
                if not isfinite(number):  # type: ignore[arg-type]
                    number = None
            except ValueError:
                number = None
            if number is None and numeric[pid]:
                raise InvalidInput.on("value", f"{pid}: {value[:40]!r} is not a number "
                                               f"({points[pid].kind} values are numbers)")
            key = (pid, t)
            seen = out.get(key)
            if seen is not None and seen[2] != value:
                raise Conflict.on("value", f"{pid} has two different values at {t.isoformat()} in one WRITE")
            out[key] = (pid, t, value, number)
        return sorted(out.values())

    @staticmethod
    def _insert(conn: Connection, rows: list[Row], source: str, now: datetime) -> list[Row]:
        """Insert ``rows`` where nothing is stored; the rows inserted. A row whose key holds a
        different value refuses the WRITE (Conflict; the caller's transaction rolls back)."""
        inserted, stored = ValueInserter(conn).insert_new(rows, source, now)
        clashes = [(rows[i], v) for i, v in stored.items() if v != rows[i][2]]
        if clashes:
            (pid, t, sent, _), first = clashes[0]
            raise Conflict.on("value", f"{len(clashes)} value(s) differ from the stored value for the same point "
                                       f"and time, e.g. {pid} at {t.isoformat()}: stored {first!r}, sent {sent!r}")
        if len(stored) + len(inserted) != len(rows):  # a skipped key with no row: deleted meanwhile
            raise ServiceError("values were removed while this WRITE was stored; send it again")
        return rows if len(inserted) == len(rows) else [rows[i] for i in inserted]

    def _enqueue(self, conn: Connection, new: list[Row], now: datetime) -> int:
        """Queue the new values of forwarded points for their upstreams (same transaction)."""
        queued = [{"upstream": u.name, "point_id": r[0], "time": r[1], "value": r[2],
                   "state": "queued", "attempts": 0, "next_attempt_at": now, "queued_at": now}
                  for u in self.settings.upstreams for r in new
                  if any(fnmatch.fnmatchcase(r[0], pat) for pat in u.points)]
        for i in range(0, len(queued), 2000):
            conn.execute(insert(OUTBOX), queued[i:i + 2000])
        return len(queued)

    def _to_readings(self, new: list[Row], points: dict[str, Point]) -> dict[str, Any]:
        channels = {p: (pt.ld_id, pt.sub_number) for p, pt in points.items()
                    if pt.ld_id is not None and pt.sub_number is not None}
        if not channels:
            return {}
        reads = [RegisterRead(*channels[p], t, n) for p, t, _, n in new
                 if p in channels and n is not None and t.timestamp() % SLOT_SECONDS == 0]
        if not reads:
            return {}
        result = self._ingest(reads, source=SOURCE)
        if result.get("rejected"):
            log.warning("ieee1888 values not stored as readings", extra={"rejected": result["rejected"][:5]})
        return {k: (len(v) if isinstance(v, list) else v) for k, v in result.items()}

    def _alert_unregistered(self, unknown: list[str], caller: Caller | None, values: int) -> None:
        mono = _time.monotonic()
        fresh = [p for p in unknown if mono - self._alerted.get(p, -ALERT_EVERY_S - 1) > ALERT_EVERY_S]
        if not fresh:
            return
        for p in fresh:
            self._alerted[p] = mono
        if len(self._alerted) > 10_000:
            self._alerted = {p: t for p, t in self._alerted.items() if mono - t <= ALERT_EVERY_S}
        who = caller.user or caller.remote if caller else "the hub"
        draft = AlertDraft(code=UNREGISTERED_CODE, severity="warning", source=SOURCE,
                           message=f"IEEE 1888 WRITE from {who} refused: {len(unknown)} unregistered point(s), "
                                   f"e.g. {unknown[0]}; nothing was stored",
                           details={"point_ids": unknown[:50], "points": len(unknown), "values": values,
                                    "user": caller.user if caller else None,
                                    "remote": caller.remote if caller else None})
        try:
            self.alerts.raise_alerts([draft])
        except Exception:  # noqa: BLE001 - the refusal stands even if the alert store fails
            log.exception("could not raise the unregistered-point alert")

    # FETCH -----------------------------------------------------------------------------------

    def fetch(self, point: Point, *, attr: Literal["time", "value"] = "time",
              conditions: Iterable[Condition] = (), select_: Literal["minimum", "maximum"] | None = None,
              after: datetime | None = None, limit: int = 100) -> list[tuple[datetime, str]]:
        """Values of ``point`` meeting ``conditions`` (AND), ascending by time, after ``after``
        (the paging position), at most ``limit``. With ``select_`` (or ``eq`` on time) at most one
        value: the latest (maximum) or earliest (minimum) of those meeting the conditions; with
        ``attr="value"`` the largest or smallest value."""
        col = VALUES.c.time if attr == "time" else (VALUES.c.number if point.numeric else VALUES.c.value)
        where = [VALUES.c.point_id == point.point_id]
        for c in conditions:
            where.append(_compare(col, c))
        q = select(VALUES.c.time, VALUES.c.value).where(and_(*where))
        if select_ is not None:
            order = col.desc() if select_ == "maximum" else col.asc()
            q = q.order_by(order, VALUES.c.time.desc() if select_ == "maximum" else VALUES.c.time.asc()).limit(1)
            if after is not None:
                return []
        else:
            if after is not None:
                q = q.where(VALUES.c.time > after)
            q = q.order_by(VALUES.c.time).limit(limit)
        with self.db.session() as s:
            return [(t, v) for t, v in s.execute(q).all()]

    def latest_times(self, point_ids: Sequence[str]) -> dict[str, datetime]:
        """The newest stored time of each point (points without values are absent)."""
        from sqlalchemy import func

        out: dict[str, datetime] = {}
        with self.db.session() as s:
            for i in range(0, len(point_ids), _CHUNK):
                for p, t in s.execute(select(VALUES.c.point_id, func.max(VALUES.c.time))
                                      .where(VALUES.c.point_id.in_(point_ids[i:i + _CHUNK]))
                                      .group_by(VALUES.c.point_id)):
                    out[p] = t
        return out

    def values_between(self, keys: Sequence[tuple[str, datetime]]) -> dict[tuple[str, datetime], str]:
        """Stored values at exact (point, time) keys (tests and audits)."""
        out: dict[tuple[str, datetime], str] = {}
        with self.db.session() as s:
            for i in range(0, len(keys), 400):
                chunk = keys[i:i + 400]
                for p, t, v in s.execute(select(VALUES.c.point_id, VALUES.c.time, VALUES.c.value)
                                         .where(tuple_(VALUES.c.point_id, VALUES.c.time).in_(chunk))):
                    out[(p, t)] = v
        return out


def _compare(col: Any, c: Condition) -> Any:
    b = c.bound
    return {"eq": col == b, "neq": col != b, "lt": col < b, "gt": col > b, "lteq": col <= b, "gteq": col >= b}[c.op]
