"""Collection (seed 2.3.3, 2.3.4): the scheduled cycle, backfill from the meters' memory, gap
re-collection within the collection deadline, and ingest of pushed readings, all storing through
one path (:class:`hub.services.usage_writer.UsageWriter`).

- :meth:`CollectionService.collect` polls the poll targets of one head-end at one slot and stores a
  usage row for every expected snapshot, normal or missing. A finished slot is not polled again;
  a slot whose run was killed half-way is run again, and what was stored stays as it is.
- :meth:`CollectionService.catch_up` is the scheduler's tick: slots the hub missed are read from
  the meters' memory (``backfill_hours`` back) or, older, stored as missing for re-collection;
  then the current slot is collected.
- :meth:`CollectionService.recollect` re-reads missing rows from the meters' memory, oldest day
  first, within ``recollect_deadline_days``; older missing rows are flagged ``expired`` (missing
  for good) and reported.
- :meth:`CollectionService.ingest_reads` stores readings pushed by an edge (MQTT units, 61968
  MeterReadings) on the same path.

Each stored batch is diagnosed as it is stored (:class:`hub.services.collection_diagnosis.CycleDiagnosis`:
out of range, negative increments, zero and missing runs, spikes, clock) and its new alerts are raised
once; the run counts them (``alerts``). Re-collection runs the row checks over the rows it filled.

Head-end failures never stop a cycle: a request that fails leaves its meters missing, and the rest
of the head-end, and every other head-end, carries on. Work on one head-end is serialised, so a
re-collection never interleaves with the scheduled cycle of the same meters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import bindparam, select

from hub.config import CollectionSection
from hub.db import Database, UTCDateTime, utcnow
from hub.headends import HeadEndAccess, HeadEnds, HeadEndSpec
from hub.ports import SLOT_SECONDS, MeterRef, ReadResult, RegisterRead
from hub.services.alerts import AlertService
from hub.services.collection_diagnosis import CycleDiagnosis, Row, group_ranges
from hub.services.collection_runs import RunKind, RunStore
from hub.services.collection_targets import Target, candidate_targets, registers_of
from hub.services.diagnosis import ROW_CHECKS, Ranges, Thresholds
from hub.services.errors import InvalidInput
from hub.services.quality import Quality
from hub.services.transaction import Transaction
from hub.services.usage_writer import USAGE, Key, Read, UsageWriter, WriteResult, utc
from hub.throttle import Priority

log = logging.getLogger("mdmhub.collection")
T = TypeVar("T")
SLOT = timedelta(seconds=SLOT_SECONDS)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REPORTED_ROWS = 1000
"""Expired rows listed one by one in a re-collection report (all are counted)."""
INGEST_CHUNK = 25_000
"""Pushed reads stored per transaction."""

RunBlocking = Callable[..., Awaitable[Any]]
Reader = Callable[[HeadEndAccess, Sequence[MeterRef], Sequence[int]], AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]]


def floor_slot(at: datetime) -> datetime:
    """The latest snapshot time on the 30-minute grid at or before ``at`` (UTC)."""
    at = utc(at)
    return at - ((at - EPOCH) % SLOT)


def slots_between(first: datetime, last: datetime) -> list[datetime]:
    """Grid slots from ``first`` to ``last`` inclusive (both on the grid)."""
    out, t = [], first
    while t <= last:
        out.append(t)
        t += SLOT
    return out


def _on_grid(at: datetime) -> bool:
    return (utc(at) - EPOCH) % SLOT == timedelta(0)


def _time_problem(at: datetime) -> str | None:
    """Why a pushed read's time cannot be stored, or None."""
    if at.tzinfo is None or at.utcoffset() is None:
        return "measured_time has no time zone"
    if not _on_grid(at):
        return "measured_time is not on the 30-minute grid"
    return None


@dataclass
class _Tally:
    targets: int = 0
    writes: WriteResult | None = None
    failures: Counter[str] | None = None
    alerts: int = 0

    def __post_init__(self) -> None:
        self.writes = WriteResult()
        self.failures = Counter()

    def counters(self) -> dict[str, Any]:
        assert self.writes is not None and self.failures is not None
        st = self.writes.statuses
        return {"targets": self.targets, "expected": sum(st.values()), "normal": st["normal"],
                "missing": st["missing"], "recollected": st["recollected"], "alerts": self.alerts,
                "failures": dict(self.failures)}


class CollectionService:
    def __init__(self, db: Database, settings: CollectionSection, head_ends: HeadEnds, run_blocking: RunBlocking,
                 clock: Callable[[], datetime] = utcnow, *, alerts: AlertService | None = None,
                 thresholds: Thresholds | None = None) -> None:
        self.db = db
        self.settings = settings
        self.head_ends = head_ends
        self.writer = UsageWriter(db)
        self.diagnosis = CycleDiagnosis(db, alerts, thresholds or Thresholds()) if alerts is not None else None
        self.runs = RunStore(db)
        self.clock = clock
        self._run = run_blocking
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, he_id: int) -> asyncio.Lock:
        return self._locks.setdefault(he_id, asyncio.Lock())

    # the scheduled cycle -----------------------------------------------------------------------

    async def collect(self, he_id: int, slot: datetime | None = None, *, force: bool = False) -> dict[str, Any]:
        """Poll head-end ``he_id``'s targets at ``slot`` (default: the current slot); the run's view."""
        at = floor_slot(slot if slot is not None else self.clock())
        if slot is not None and at != utc(slot):
            raise InvalidInput.on("slot", f"{slot.isoformat()} is not on the 30-minute grid")
        async with self._lock(he_id):
            return await self._cycle(he_id, "scheduled", at, [at], force=force,
                                     read=lambda access, meters, subs: access.read_registers(meters, at, subs))

    async def backfill(self, he_id: int, first: datetime, last: datetime, *, read: bool = True) -> dict[str, Any] | None:
        """Store the slots ``first``..``last`` of head-end ``he_id`` read from the meters' memory
        (with ``read`` false: as missing, for re-collection to fill). None if there is no slot."""
        slots = slots_between(floor_slot(first) if _on_grid(first) else floor_slot(first) + SLOT, floor_slot(last))
        if not slots:
            return None

        def history(access: HeadEndAccess, meters: Sequence[MeterRef],
                    subs: Sequence[int]) -> AsyncIterator[tuple[Sequence[MeterRef], ReadResult]]:
            return access.read_history(meters, slots[0], slots[-1], subs)

        async with self._lock(he_id):
            return await self._cycle(he_id, "backfill", slots[-1], slots, read=history if read else None)

    async def catch_up(self, he_id: int, now: datetime | None = None) -> list[dict[str, Any]]:
        """The scheduler's tick for one head-end: slots since the last finished run (the hub was
        down, or a run was killed) from the meters' memory within ``backfill_hours`` and as missing
        before that (down to the collection deadline); then the current slot. Run views."""
        now = utc(now or self.clock())
        started = utcnow()
        slot = floor_slot(now)
        window = slot - timedelta(hours=self.settings.backfill_hours)
        horizon = floor_slot(now - timedelta(days=self.settings.recollect_deadline_days)) + SLOT
        last = await self._run(self.runs.last_slot, he_id)
        runs: list[dict[str, Any] | None] = []
        if last is None:
            runs.append(await self.backfill(he_id, window, slot - SLOT) if window < slot else None)
        elif last < slot - SLOT:
            gap = max(last + SLOT, horizon)
            if gap < window:
                runs.append(await self.backfill(he_id, gap, min(window, slot) - SLOT, read=False))
            if window < slot:
                runs.append(await self.backfill(he_id, max(gap, window), slot - SLOT))
        runs.append(await self.collect(he_id, slot))
        await self._run(self.runs.close_interrupted, he_id, slot - SLOT, started)
        return [r for r in runs if r is not None]

    async def _cycle(self, he_id: int, kind: RunKind, slot: datetime, slots: list[datetime], *,
                     read: Reader | None, force: bool = False) -> dict[str, Any]:
        run_id, go = await self._run(self.runs.begin, he_id, kind, slot, force=force)
        if not go:
            return await self._run(self.runs.get, run_id)
        try:
            spec, targets, ranges = await self._run(self._prepare, he_id)
            tally = await self._poll(spec, targets, slots, run_id, kind, read, ranges)
        except BaseException as e:
            log.exception("collection run failed", extra={"he_id": he_id, "kind": kind, "slot": slot.isoformat()})
            await asyncio.shield(self._run(self.runs.finish, run_id, state="failed", error=f"{type(e).__name__}: {e}"))
            raise
        view = await self._run(self.runs.finish, run_id, **tally.counters())
        log.info("collection run", extra={k: view[k] for k in ("he_id", "kind", "slot_time", "targets", "normal",
                                                              "missing", "alerts", "failures")})
        return view

    def _prepare(self, he_id: int) -> tuple[HeadEndSpec, list[Target], Ranges]:
        spec = self.head_ends.spec(he_id)
        with self.db.session() as s:
            targets = candidate_targets(s, he_id)
        groups = group_ranges(self.db) if self.diagnosis is not None else {}
        return spec, targets, {t.ld_id: groups.get(t.group_id, {}) for t in targets}

    def _store_batch(self, tally: _Tally, ranges: Ranges, since: datetime, until: datetime, *,
                     checks: frozenset[str] | None = None, diagnose: bool = True, **store: Any) -> WriteResult:
        """Store one batch and diagnose what it now holds (a failed diagnosis is logged and
        counted, never undoes the store). Slots stored as missing because the hub was away are not
        diagnosed: that is no meter's fault, and re-collection fills them."""
        diagnose = diagnose and self.diagnosis is not None
        written = self.writer.store(keep_rows=diagnose, **store)
        if diagnose:
            assert self.diagnosis is not None
            rows: list[Row] = written.rows
            if checks is not None:  # re-collection: the rows it filled
                filled = set(written.filled_keys)
                rows = [r for r in rows if r[:3] in filled]
            try:
                tally.alerts += self.diagnosis.check(rows, since=since, until=until, ranges=ranges,
                                                     he_id=store.get("he_id"), checks=checks)
            except Exception:  # noqa: BLE001 - the readings are stored; a diagnosis fault must not fail the cycle
                log.exception("diagnosis failed", extra={"he_id": store.get("he_id"), "run_id": store.get("run_id")})
                assert tally.failures is not None
                tally.failures["diagnosis-error"] += len({r[0] for r in rows})
            written.rows = []
        return written

    async def _poll(self, spec: HeadEndSpec, targets: list[Target], slots: list[datetime], run_id: int,
                    source: str, read: Reader | None, ranges: Ranges | None = None) -> _Tally:
        """Read ``targets`` with ``read`` and store every expected snapshot of ``slots``."""
        polled = {t.ld_id: [s for s in slots if t.collecting(s)] for t in targets}
        targets = [t for t in targets if polled[t.ld_id]]
        tally = _Tally(targets=len(targets))
        if not targets:
            return tally
        by_ld = {t.ld_id: t for t in targets}
        cumulative = {(t.ld_id, r.sub_number) for t in targets for r in t.registers if r.cumulative}

        async def store(meters: Sequence[MeterRef], result: ReadResult) -> None:
            expected: list[Key] = [(m.ld_id, sub, s) for m in meters for sub in by_ld[m.ld_id].sub_numbers
                                   for s in polled[m.ld_id]]
            wanted = set(expected)
            reads = [r for r in result.reads if (r.ld_id, r.sub_number, utc(r.measured_time)) in wanted]
            for m in meters:
                error = result.failures.get(m.ld_id)
                if error is not None:
                    tally.failures[error.code] += 1  # type: ignore[index]
            written = await self._run(self._store_batch, tally, ranges or {}, slots[0], slots[-1],
                                      expected=expected, reads=reads,
                                      cumulative=lambda ld, sub: (ld, sub) in cumulative, source=source,
                                      he_id=spec.he_id, run_id=run_id, diagnose=read is not None)
            tally.writes.add(written)  # type: ignore[union-attr]

        groups: dict[tuple[int, ...], list[MeterRef]] = {}
        for t in targets:
            groups.setdefault(t.sub_numbers, []).append(t.meter)
        access: HeadEndAccess | None = None
        if read is not None:
            try:
                access = self.head_ends.access_for(spec)
            except Exception as e:  # noqa: BLE001 - a head-end that cannot be built is unreachable
                log.error("head-end cannot be built", extra={"he_id": spec.he_id, "error": str(e)})
        for subs, meters in groups.items():
            if access is None:
                code = "not-read" if read is None else "adapter-error"
                size = self.head_ends.batch_size
                for i in range(0, len(meters), size):
                    batch = meters[i:i + size]
                    await store(batch, ReadResult())
                    tally.failures[code] += len(batch)  # type: ignore[index]
                continue
            assert read is not None
            async for batch, result in read(access, meters, subs):
                await store(batch, result)
        return tally

    # re-collection -----------------------------------------------------------------------------

    async def recollect(self, now: datetime | None = None, he_id: int | None = None) -> dict[str, Any]:
        """Re-read missing rows within the collection deadline (all head-ends, or one); flag and
        report the missing rows that passed it. Returns the report."""
        now = utc(now or self.clock())
        cutoff = now - timedelta(days=self.settings.recollect_deadline_days)
        he_ids = [he_id] if he_id is not None else await self._run(self.head_ends.he_ids)
        runs = []
        for he in he_ids:
            try:
                async with self._lock(he):
                    runs.append(await self._recollect_one(he, now, cutoff))
            except Exception as e:  # noqa: BLE001 - one head-end's trouble never stops the others
                if he_id is not None:
                    raise
                log.error("re-collection failed", extra={"he_id": he, "error": str(e)})
        expired, rows = await self._run(self._expire, cutoff, he_id)
        report = {"now": now.isoformat(), "deadline": cutoff.isoformat(), "head_ends": runs,
                  "recollected": sum(r["recollected"] for r in runs), "still_missing": sum(r["missing"] for r in runs),
                  "expired": expired, "expired_rows": rows}
        if expired:
            log.warning("missing readings passed the collection deadline and stay missing",
                        extra={"expired": expired, "deadline": cutoff.isoformat(),
                               "ld_ids": sorted({r["ld_id"] for r in rows})[:50]})
        log.info("re-collection", extra={k: report[k] for k in ("recollected", "still_missing", "expired")})
        return report

    async def _recollect_one(self, he_id: int, now: datetime, cutoff: datetime) -> dict[str, Any]:
        run_id, _ = await self._run(self.runs.begin, he_id, "recollect", floor_slot(now), force=True)
        tally = _Tally()
        try:
            spec, targets, ranges = await self._run(self._prepare, he_id)
            live = {t.ld_id: t for t in targets if t.collecting(now)}
            gaps = await self._run(self._missing_rows, sorted(live), cutoff, now)
            tally.targets = len({k[0] for k in gaps})
            if gaps:
                await self._refill(spec, live, gaps, run_id, tally, ranges)
        except BaseException as e:
            await asyncio.shield(self._run(self.runs.finish, run_id, state="failed", error=f"{type(e).__name__}: {e}"))
            raise
        assert tally.writes is not None
        filled = tally.writes.filled
        return await self._run(self.runs.finish, run_id, targets=tally.targets, expected=len(gaps), normal=0,
                               recollected=filled, missing=len(gaps) - filled, alerts=tally.alerts,
                               failures=dict(tally.failures or {}))

    async def _refill(self, spec: HeadEndSpec, live: dict[str, Target], gaps: list[Key], run_id: int,
                      tally: _Tally, ranges: Ranges) -> None:
        """Read the gaps day by day, oldest first (so each day's increments build on the last)."""
        try:
            access = self.head_ends.access_for(spec)
        except Exception as e:  # noqa: BLE001
            log.error("head-end cannot be built", extra={"he_id": spec.he_id, "error": str(e)})
            assert tally.failures is not None
            tally.failures["adapter-error"] += len({k[0] for k in gaps})
            return
        days: dict[datetime, list[Key]] = {}
        for key in gaps:
            days.setdefault(key[2].replace(hour=0, minute=0, second=0, microsecond=0), []).append(key)
        cumulative = {(t.ld_id, r.sub_number) for t in live.values() for r in t.registers if r.cumulative}
        for day in sorted(days):
            keys = days[day]
            wanted = set(keys)
            first, last = min(k[2] for k in keys), max(k[2] for k in keys)
            by_subs: dict[tuple[int, ...], list[MeterRef]] = {}
            for ld_id in sorted({k[0] for k in keys}):
                by_subs.setdefault(live[ld_id].sub_numbers, []).append(live[ld_id].meter)
            for subs, meters in by_subs.items():
                async for batch, result in access.read_history(meters, first, last, subs,
                                                               priority=Priority.RECOLLECTION):
                    reads = [r for r in result.reads if (r.ld_id, r.sub_number, utc(r.measured_time)) in wanted]
                    for m in batch:
                        error = result.failures.get(m.ld_id)
                        if error is not None:
                            tally.failures[error.code] += 1  # type: ignore[index]
                    if reads:
                        written = await self._run(self._store_batch, tally, ranges, first, last, checks=ROW_CHECKS,
                                                  expected=(), reads=reads,
                                                  cumulative=lambda ld, sub: (ld, sub) in cumulative,
                                                  source="recollect", he_id=spec.he_id, run_id=run_id)
                        tally.writes.add(written)  # type: ignore[union-attr]

    def _missing_rows(self, ld_ids: list[str], since: datetime, until: datetime) -> list[Key]:
        """Missing rows of ``ld_ids`` from ``since`` to ``until`` (the partial index over missing rows)."""
        if not ld_ids:
            return []
        wanted = set(ld_ids)
        c = USAGE.c
        with self.db.session() as s:
            rows = s.execute(select(c.ld_id, c.sub_number, c.measured_time)
                             .where(c.status == "missing", c.measured_time >= since, c.measured_time <= until))
            return sorted((ld, sub, t) for ld, sub, t in rows if ld in wanted)

    def _expire(self, cutoff: datetime, he_id: int | None) -> tuple[int, list[dict[str, Any]]]:
        """Flag missing rows older than ``cutoff`` ``expired`` (once); the count and the first rows."""
        c = USAGE.c
        with self.db.session() as s:
            rows = s.execute(select(c.ld_id, c.sub_number, c.measured_time)
                             .where(c.status == "missing", c.measured_time < cutoff,
                                    c.quality.op("&")(int(Quality.EXPIRED)) == 0)
                             .order_by(c.measured_time, c.ld_id, c.sub_number)).all()
            if he_id is not None:
                mine = {t.ld_id for t in candidate_targets(s, he_id)}
                rows = [r for r in rows if r[0] in mine]
            if rows:
                s.connection().execute(
                    USAGE.update()
                    .where(c.ld_id == bindparam("k_ld"), c.sub_number == bindparam("k_sub"),
                           c.measured_time == bindparam("k_t", type_=UTCDateTime))
                    .values(quality=c.quality.op("|")(int(Quality.EXPIRED)),
                            updated_at=bindparam("now", type_=UTCDateTime)),
                    [{"k_ld": ld, "k_sub": sub, "k_t": t, "now": utcnow()} for ld, sub, t in rows])
        listed = [{"ld_id": ld, "sub_number": sub, "measured_time": t.isoformat()} for ld, sub, t in rows[:REPORTED_ROWS]]
        return len(rows), listed

    # pushed readings ---------------------------------------------------------------------------

    def ingest_reads(self, reads: Iterable[RegisterRead], source: str, he_id: int | None = None) -> dict[str, Any]:
        """Store readings pushed by an edge (same path as polled reads). Reads of unknown or
        uninstalled LD_IDs, of registers the device type lacks, or off the 30-minute grid are
        refused and listed; the same reads stored twice change nothing."""
        return self.ingest_values([(r.ld_id, r.sub_number, r.measured_time, r.value) for r in reads], source, he_id)

    def ingest_values(self, values: Iterable[Read], source: str, he_id: int | None = None,
                      within: Transaction | None = None) -> dict[str, Any]:
        """:meth:`ingest_reads` of reads given as plain (ld_id, sub_number, measured_time, value)
        tuples: what bulk pushes use, a read object per value costing more than storing it.

        Stored as pushed reads (usage rows alone: :mod:`hub.services.usage_writer`), in transactions
        of :data:`INGEST_CHUNK` reads, or in the open transaction ``within`` when given (the caller
        commits or rolls back, e.g. a whole message only once it is known valid)."""
        values = list(values)
        registers = self._registers(list({v[0]: None for v in values}))
        subs = {ld: {reg.sub_number for reg in regs} for ld, regs in registers.items()}
        time_problems: dict[datetime, str | None] = {}  # a batch holds few distinct instants
        accepted: list[Read] = []
        rejected: list[dict[str, Any]] = []
        for v in values:
            ld_id, sub, t, _ = v
            have = subs.get(ld_id)
            if have is None:
                reason = "unknown or uninstalled LD_ID"
            elif sub not in have:
                reason = f"the device type has no register {sub}"
            elif t in time_problems:
                reason = time_problems[t]
            else:
                reason = time_problems[t] = _time_problem(t)
            if reason:
                rejected.append({"ld_id": ld_id, "sub_number": sub, "measured_time": t.isoformat(), "reason": reason})
            else:
                accepted.append(v)
        cumulative = {(ld, reg.sub_number) for ld, regs in registers.items() for reg in regs if reg.cumulative}
        total = WriteResult()
        accepted.sort(key=itemgetter(0, 1, 2))  # stable: of two values of one snapshot, the first counts
        for i in range(0, len(accepted), INGEST_CHUNK):
            total.add(self.writer.store(expected=(), values=accepted[i:i + INGEST_CHUNK],
                                        cumulative=lambda ld, sub: (ld, sub) in cumulative, source=source,
                                        he_id=he_id, pushed=True, conn=within.conn if within else None))
        return {"received": len(values), "stored": total.inserted, "filled": total.filled,
                "duplicates": total.duplicates, "rejected": rejected}

    def _registers(self, ld_ids: list[str]) -> dict[str, Any]:
        with self.db.session() as s:
            return registers_of(s, ld_ids)
