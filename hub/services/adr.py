"""Meter ADR: DR events in, contract-capacity reservations out (seed 2.4.6).

On a distribute (the full list of a VTN's current events) each event is stored (idempotent by VTN,
event ID and modification number), matched against the active policies of the metering points it
targets (:mod:`hub.services.adr_policies`), and each match becomes a ``planned`` action. The answer
(optIn / optOut with a reason) is given at once: it waits at most ``answer_grace_s`` for a first
reservation outcome, never for the fan-out. A background worker then brings each affected metering
point's reservations in line with its live actions (:mod:`hub.services.adr_plan`), through the
HeadEnd port with bounded concurrency, and records every outcome in the action history.

Life of an event: a higher modification number releases the earlier version's actions and plans
the new one (reservations that still fit are kept, the others moved or cancelled); ``cancelled``
or absence from a later complete list cancels the actions (cut meters are restored at once); a
test event is stored and answered and touches no meter; an event whose window has passed is
stored and answered optOut; a lower modification number is refused (450) and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import String, cast, false, func, insert, or_, select, update

from hub.config import OpenAdrSection
from hub.db import Database, utcnow
from hub.headends import HeadEndAccess, HeadEnds
from hub.model import (
    AdrAction,
    AdrEvent,
    AdrPolicy,
    AdrReservation,
    Concentrator,
    CustomerLogicalDevice,
    LogicalDevice,
    PhysicalDevice,
)
from hub.ports import HeadEndError, HeadEndRejected, MeterRef
from hub.services.adr_assist import AssistService
from hub.services.adr_events import DrEvent
from hub.services.adr_plan import Held, Segment, Want, covering, diff, segments
from hub.services.adr_policies import PolicyService, evaluate
from hub.services.adr_reports import AdrReportService
from hub.services.adr_status import AdrStatusService
from hub.services.errors import NotFound

log = logging.getLogger("mdmhub.adr")
T = TypeVar("T")
LIVE = ("planned", "reserved", "failed")
CHUNK = 900  # bound parameters per IN (SQLite's limit is 999)
OPT_IN, OPT_OUT = "optIn", "optOut"
POLICY_COLUMNS = ("id", "ld_id", "signal_levels", "signal_names", "reduced_amps", "reduction_step_amps",
                  "days_of_week", "hour_from", "hour_to", "min_notice_minutes", "max_events_per_month",
                  "opt_out_event_id")
JSON_POLICY_COLUMNS = frozenset({"signal_levels", "signal_names", "days_of_week"})
OUT_OF_SEQUENCE, TARGET_MISMATCH = 450, 462
UNBOUNDED_AMPS = 10**6


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one event: what the VEN sends back in its eventResponse."""

    event_id: str
    modification_number: int
    opt: str
    reason: str
    code: int = 200
    response_required: bool = True


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """An event the VEN answered optIn whose every reservation then failed: the edge tells the VTN
    (oadrCreateOpt optOut) that the VEN does not take part after all."""

    vtn_id: str
    event_id: str
    modification_number: int
    reason: str


@dataclass
class _Job:
    lds: set[str]
    first_success: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    done: asyncio.Future[None] | None = None
    deferred: list[tuple[int, DrEvent, set[str] | None, datetime]] = field(default_factory=list)


@dataclass
class _LdPlan:
    meter: MeterRef | None
    access: HeadEndAccess | None
    wants: list[Want]
    held: list[Held]
    error: str | None = None


@dataclass
class _Outcome:
    ld_id: str
    meter: MeterRef | None
    reserved: list[tuple[Segment, str]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    succeeded_rows: set[int] = field(default_factory=set)


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


ACTION_EXPORT_COLUMNS = ("id", "event_id", "modification_number", "ld_id", "policy_id", "state", "start_at",
                         "end_at", "reduced_amps", "restore_amps", "directed_at", "updated_at", "detail")
"""Columns of the ADR action history export (billing incentives), as the API and the CLI write it."""


class AdrService:
    """DR events, ADR policies, reservations and the action history."""

    def __init__(self, db: Database, head_ends: HeadEnds,
                 run: Callable[..., Awaitable[Any]], settings: OpenAdrSection | None = None,
                 *, open_ended_s: int = 86400) -> None:
        self.db = db
        self.head_ends = head_ends
        self.run = run
        self.settings = settings or OpenAdrSection()
        self.tz = ZoneInfo(self.settings.policy_timezone)
        self.open_ended_s = open_ended_s
        self.policies = PolicyService(db)
        self.assist = AssistService(db, self.tz)
        self.reports = AdrReportService(db, self.tz)
        self.status = AdrStatusService(db)
        self.clock: Callable[[], datetime] = utcnow
        self._pending: list[_Job] = []
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self._ingest_lock = threading.Lock()  # ingesting and deferred planning of one VTN's events in turn
        self._deferred: list[tuple[int, DrEvent, set[str] | None, datetime]] = []
        self.withdrawal_listeners: list[Callable[[Withdrawal], Awaitable[None]]] = []
        self._watchers: set[asyncio.Task[None]] = set()

    # receiving events ---------------------------------------------------------------------------

    async def receive(self, vtn_id: str, events: Sequence[DrEvent], *, complete: bool = True,
                      market_context: str | None = None, also_present: Iterable[str] = ()) -> list[Answer]:
        """Take a VTN's events (``complete``: this is its full current list, so an event missing
        from it is cancelled; ``also_present``: IDs of events in the list the edge could not read,
        which are therefore not missing) and answer each, without waiting for the reservations."""
        now = self.clock()
        decisions, affected, deferred = await self.run(self._ingest, vtn_id, list(events), complete,
                                                       market_context, now, set(also_present))
        watched = [d for d in decisions if d[1] is not None and d[2] > 0]
        if not affected and not deferred:
            return [d[0] for d in decisions]
        job = self._submit(affected, [d[1] for d in watched], deferred)
        answers = []
        for answer, row_id, matched in decisions:
            if row_id is None or matched == 0:
                answers.append(answer)
                continue
            if matched > 0:  # -1: matching runs after the answer
                answer = await self._settle(job, answer, row_id, matched)
            if answer.opt == OPT_IN:
                self._watch(job, vtn_id, row_id)
            answers.append(answer)
        return answers

    def _watch(self, job: _Job, vtn_id: str, row_id: int) -> None:
        """Once the fan-out of an event answered optIn is over, withdraw if every reservation failed."""

        async def watch() -> None:
            assert job.done is not None
            await asyncio.shield(job.done)
            withdrawal = await self.run(self._withdraw_if_failed, vtn_id, row_id)
            if withdrawal is None:
                return
            log.warning("every reservation of an event answered optIn failed; opting out",
                        extra={"vtn_id": vtn_id, "event_id": withdrawal.event_id, "reason": withdrawal.reason})
            for listener in list(self.withdrawal_listeners):
                try:
                    await listener(withdrawal)
                except Exception:  # noqa: BLE001 - one failing edge does not stop the others
                    log.exception("withdrawal listener failed", extra={"event_id": withdrawal.event_id})

        task = asyncio.create_task(watch())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _withdraw_if_failed(self, vtn_id: str, row_id: int) -> Withdrawal | None:
        """The latest modification of an event answered optIn, every action of which ended
        ``failed``: its stored answer becomes optOut (so a repeated delivery is answered alike)."""
        with self.db.session() as s:
            row = s.get(AdrEvent, row_id)
            if row is None or row.response != OPT_IN:
                return None
            newer = s.scalar(select(func.count()).select_from(AdrEvent).where(
                AdrEvent.vtn_id == row.vtn_id, AdrEvent.event_id == row.event_id,
                AdrEvent.modification_number > row.modification_number))
            states = dict(s.execute(select(AdrAction.state, func.count()).where(AdrAction.adr_event_id == row_id)
                                    .group_by(AdrAction.state)).all())
            if newer or not states.get("failed") or set(states) != {"failed"}:
                return None
            reason = (f"every reservation failed after the optIn answer ({states['failed']} metering points); "
                      "opted out (oadrCreateOpt)")
            row.response, row.response_reason = OPT_OUT, reason
            s.add(row)
            return Withdrawal(vtn_id, row.event_id, row.modification_number, reason)

    async def settle_withdrawals(self) -> None:
        """Wait until every pending withdrawal check has run (tests, shutdown)."""
        while self._watchers:
            await asyncio.gather(*list(self._watchers), return_exceptions=True)

    async def _settle(self, job: _Job, answer: Answer, row_id: int, matched: int) -> Answer:
        """optIn once a reservation of the event succeeded (or while they are still in progress after
        the grace time); optOut when every one failed within it."""
        fut = job.first_success[row_id]
        try:
            ok = await asyncio.wait_for(asyncio.shield(fut), self.settings.answer_grace_s)
        except TimeoutError:
            ok = None
        if ok is False:
            answer = Answer(answer.event_id, answer.modification_number, OPT_OUT,
                            f"{matched} metering points matched but every reservation failed",
                            answer.code, answer.response_required)
        elif ok is None:
            answer = Answer(answer.event_id, answer.modification_number, OPT_IN,
                            f"{matched} metering points matched; reservations in progress",
                            answer.code, answer.response_required)
        await self.run(self._store_answer, row_id, answer)
        return answer

    def _store_answer(self, row_id: int, answer: Answer) -> None:
        with self.db.session() as s:
            s.execute(update(AdrEvent).where(AdrEvent.id == row_id)
                      .values(response=answer.opt, response_reason=answer.reason[:2000]))

    def _ingest(self, vtn_id: str, events: list[DrEvent], complete: bool, market_context: str | None,
                now: datetime, also_present: set[str]) -> tuple[list[tuple[Answer, int | None, int]], set[str],
                                                                list[tuple[int, DrEvent, set[str] | None, datetime]]]:
        with self._ingest_lock:
            self._deferred = []
            decisions, affected = self._ingest_locked(vtn_id, events, complete, market_context, now, also_present)
            deferred, self._deferred = self._deferred, []
        return decisions, affected, deferred

    def _ingest_locked(self, vtn_id: str, events: list[DrEvent], complete: bool, market_context: str | None,
                       now: datetime, also_present: set[str]) -> tuple[list[tuple[Answer, int | None, int]], set[str]]:
        decisions, affected = [], set()
        for ev in events:
            with self.db.session() as s:
                answer, row_id, matched, lds = self._ingest_one(s, vtn_id, ev, market_context, now)
            decisions.append((answer, row_id, matched))
            affected |= lds
            log.info("dr event", extra={"vtn_id": vtn_id, "event_id": ev.event_id,
                                        "modification": ev.modification_number, "opt": answer.opt,
                                        "reason": answer.reason, "matched": matched})
        if complete:
            with self.db.session() as s:
                affected |= self._implied_cancel(s, vtn_id, {e.event_id for e in events} | also_present, now)
        return decisions, affected

    def _ingest_one(self, s: Any, vtn_id: str, ev: DrEvent, market_context: str | None,
                    now: datetime) -> tuple[Answer, int | None, int, set[str]]:
        def answer(opt: str, reason: str, code: int = 200) -> Answer:
            return Answer(ev.event_id, ev.modification_number, opt, reason, code, ev.response_required)

        latest = s.scalars(select(AdrEvent).where(AdrEvent.vtn_id == vtn_id, AdrEvent.event_id == ev.event_id)
                           .order_by(AdrEvent.modification_number.desc()).limit(1)).first()
        if latest is not None and ev.modification_number == latest.modification_number:
            return answer(latest.response or OPT_OUT, latest.response_reason or "already answered"), None, 0, set()
        if latest is not None and ev.modification_number < latest.modification_number:
            return (answer(latest.response or OPT_OUT, f"modification {ev.modification_number} is older than "
                           f"the one held ({latest.modification_number}); ignored", OUT_OF_SEQUENCE), None, 0, set())
        row = AdrEvent(vtn_id=vtn_id, event_id=ev.event_id, modification_number=ev.modification_number,
                       market_context=ev.market_context, priority=ev.priority, status=ev.status,
                       test_event=ev.test, dtstart=ev.dtstart, duration_seconds=ev.duration_s,
                       tolerance_seconds=ev.tolerance_s, notification_seconds=ev.notification_s,
                       ramp_up_seconds=ev.ramp_up_s, recovery_seconds=ev.recovery_s,
                       signals=[sig.as_dict() for sig in ev.signals], targets=ev.targets.as_dict(),
                       received_at=now)
        s.add(row)
        s.flush()
        affected: set[str] = set()
        if latest is not None:
            state = "cancelled" if ev.cancelled else "released"
            affected = self._end_actions(s, vtn_id, ev.event_id, state,
                                         f"{'cancelled' if ev.cancelled else 'superseded'} by modification "
                                         f"{ev.modification_number}", now)

        def done(a: Answer, matched: int = 0) -> tuple[Answer, int | None, int, set[str]]:
            row.response, row.response_reason = a.opt, a.reason[:2000]
            s.add(row)
            return a, row.id, matched, affected

        if ev.cancelled:
            what = f"{len(affected)} metering points released" if latest else "unknown event: nothing to release"
            return done(answer(OPT_IN, f"cancellation confirmed; {what}"))
        if market_context and ev.market_context != market_context:
            return done(answer(OPT_OUT, f"market context {ev.market_context!r} is not this VEN's ({market_context})"))
        if ev.test:
            return done(answer(OPT_IN, "test event: stored and acknowledged, no meter touched"))
        end = ev.end or (ev.dtstart + timedelta(seconds=self.open_ended_s))
        if end + timedelta(seconds=ev.tolerance_s) <= now:
            return done(answer(OPT_OUT, "the event's window has already passed; not acted on"))
        lds, unknown = self._target_lds(s, ev, now)
        if lds is not None and not lds:
            if unknown:
                return done(answer(OPT_OUT, "no such targets: " + ", ".join(f"{k} {v}" for k, v in unknown[:10]),
                                   TARGET_MISMATCH))
            return done(answer(OPT_OUT, "no metering point targeted has an active ADR policy"))
        candidates = self._candidate_count(s, lds)
        if candidates > self.settings.answer_inline_max:
            return self._answer_by_shape(s, row, ev, lds, candidates, now, done, answer, unknown)
        planned, reasons = self._plan_actions(s, row.id, ev, lds, now)
        affected |= {p["ld_id"] for p in planned}
        if not planned:
            summary = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
            return done(answer(OPT_OUT, f"no policy matched ({summary})"))
        note = f"; unknown targets: {', '.join(f'{k} {v}' for k, v in unknown[:10])}" if unknown else ""
        return done(answer(OPT_IN, f"{len(planned)} metering points matched{note}"), len(planned))

    def _candidate_count(self, s: Any, lds: set[str] | None) -> int:
        """Active policies of the targeted LDs, counted in the database (no per-LD work)."""
        q = (select(func.count()).select_from(AdrPolicy)
             .where(AdrPolicy.active.is_(True), AdrPolicy.deleted == false()))
        if lds is None:
            return int(s.scalar(q) or 0)
        if len(lds) <= self.settings.answer_inline_max:
            return len(lds)  # small enough to match inline whatever the count
        return sum(int(s.scalar(q.where(AdrPolicy.ld_id.in_(chunk))) or 0) for chunk in _chunks(sorted(lds)))

    def _answer_by_shape(self, s: Any, row: AdrEvent, ev: DrEvent, lds: set[str] | None, candidates: int,
                         now: datetime, done: Callable[..., Any], answer: Callable[..., Answer],
                         unknown: list[tuple[str, str]]) -> Any:
        """Many targeted policies: decide the answer from the distinct policy shapes (each evaluated
        once over the event's un-randomised window, monthly caps not counted) and leave the per-LD
        matching, planning and insertion to the background worker, after answering."""
        # DISTINCT in the database, list columns compared as their JSON text: only distinct shapes
        # are decoded (decoding every targeted policy's lists was most of the answer's time)
        names = [c for c in POLICY_COLUMNS if c not in ("id", "ld_id")]
        cols = [cast(getattr(AdrPolicy, c), String).label(c) if c in JSON_POLICY_COLUMNS else getattr(AdrPolicy, c)
                for c in names]
        q = select(*cols).where(AdrPolicy.active.is_(True), AdrPolicy.deleted == false()).distinct()
        shapes: dict[tuple[Any, ...], Any] = {}
        chunks = [None] if lds is None else list(_chunks(sorted(lds)))
        for chunk in chunks:
            for r in s.execute(q if chunk is None else q.where(AdrPolicy.ld_id.in_(chunk))):
                if tuple(r) not in shapes:
                    shapes[tuple(r)] = SimpleNamespace(**{c: json.loads(v) if c in JSON_POLICY_COLUMNS and v else v
                                                          for c, v in zip(names, r, strict=True)})
        end = ev.end or (ev.dtstart + timedelta(seconds=self.open_ended_s))
        reasons: Counter[str] = Counter()
        matched = False
        for r in shapes.values():
            v = evaluate(r, ev, contract_amps=UNBOUNDED_AMPS, window=(ev.dtstart, end), received_at=now,
                         tz=self.tz, events_this_month=0)  # capacity against each contract: per LD, later
            matched = matched or v.amps is not None
            reasons[v.reason] += 1
        if not matched:
            summary = ", ".join(f"{n} policy shapes {why}" for why, n in reasons.most_common())
            return done(answer(OPT_OUT, f"no policy matched ({summary})"))
        self._deferred.append((row.id, ev, lds, now))
        note = f"; unknown targets: {', '.join(f'{k} {v}' for k, v in unknown[:10])}" if unknown else ""
        return done(answer(OPT_IN, f"{candidates} active policies targeted; matching in progress{note}"), -1)

    def _plan_deferred(self, items: list[tuple[int, DrEvent, set[str] | None, datetime]]) -> set[str]:
        """Per-LD matching of answered events, unless a later modification or cancellation came first."""
        affected: set[str] = set()
        with self._ingest_lock:
            for row_id, ev, lds, now in items:
                with self.db.session() as s:
                    row = s.get(AdrEvent, row_id)
                    newer = s.scalar(select(func.count()).select_from(AdrEvent).where(
                        AdrEvent.vtn_id == row.vtn_id, AdrEvent.event_id == row.event_id,
                        AdrEvent.modification_number > row.modification_number))
                    if newer or row.status == "cancelled":
                        continue
                    planned, reasons = self._plan_actions(s, row_id, ev, lds, now)
                    affected |= {p["ld_id"] for p in planned}
                    log.info("dr event matched after answering", extra={
                        "event_id": ev.event_id, "matched": len(planned), "reasons": dict(reasons)})
        return affected

    def _end_actions(self, s: Any, vtn_id: str, event_id: str, state: str, detail: str, now: datetime) -> set[str]:
        rows = select(AdrEvent.id).where(AdrEvent.vtn_id == vtn_id, AdrEvent.event_id == event_id)
        live = (AdrAction.adr_event_id.in_(rows), AdrAction.state.in_(LIVE))
        lds = set(s.scalars(select(AdrAction.ld_id).where(*live)))
        if lds:
            s.execute(update(AdrAction).where(*live).values(state=state, detail=detail, updated_at=now),
                      execution_options={"synchronize_session": False})
        return lds

    def _implied_cancel(self, s: Any, vtn_id: str, present: set[str], now: datetime) -> set[str]:
        """Events with live actions that the VTN's complete list no longer carries are cancelled."""
        gone = set(s.scalars(select(AdrEvent.event_id).join(AdrAction, AdrAction.adr_event_id == AdrEvent.id)
                             .where(AdrEvent.vtn_id == vtn_id, AdrAction.state.in_(LIVE), AdrAction.end_at > now)
                             .distinct())) - present
        affected: set[str] = set()
        for event_id in sorted(gone):
            affected |= self._end_actions(s, vtn_id, event_id, "cancelled",
                                          "implied cancel: absent from the VTN's event list", now)
            s.execute(update(AdrEvent).where(AdrEvent.vtn_id == vtn_id, AdrEvent.event_id == event_id)
                      .values(status="cancelled"))
            log.info("dr event cancelled by absence", extra={"vtn_id": vtn_id, "event_id": event_id})
        return affected

    def _target_lds(self, s: Any, ev: DrEvent, now: datetime) -> tuple[set[str] | None, list[tuple[str, str]]]:
        """The targeted LDs (None: every LD with an active policy) and the target IDs that name nothing."""
        t = ev.targets
        unknown = list(t.unknown)
        if t.everything:
            return None, unknown
        lds: set[str] = set()
        ld = LogicalDevice
        for chunk in _chunks(list(t.ld_ids)):
            found = set(s.scalars(select(ld.ld_id).where(ld.ld_id.in_(chunk), ld.deleted == false())))
            lds |= found
            unknown += [("resource_id", x) for x in chunk if x not in found]
        for chunk in _chunks(list(t.cluster_ids)):
            rows = s.execute(select(ld.cluster_id, ld.ld_id).where(ld.cluster_id.in_(chunk), ld.deleted == false(),
                                                                     ld.ld_id.is_not(None))).all()
            lds |= {r[1] for r in rows}
            unknown += [("group_id", x) for x in chunk if x not in {r[0] for r in rows}]
        cld = CustomerLogicalDevice
        for chunk in _chunks(list(t.customer_ids)):
            rows = s.execute(select(cld.customer_id, cld.ld_id).where(
                cld.customer_id.in_(chunk), cld.deleted == false(),
                or_(cld.valid_from.is_(None), cld.valid_from <= now),
                or_(cld.valid_to.is_(None), cld.valid_to > now))).all()
            lds |= {r[1] for r in rows}
            unknown += [("party_id", x) for x in chunk if x not in {r[0] for r in rows}]
        return lds, unknown

    def _plan_actions(self, s: Any, row_id: int, ev: DrEvent, lds: set[str] | None,
                      now: datetime) -> tuple[list[dict[str, Any]], Counter[str]]:
        """Evaluate the targeted LDs' active policies; insert one planned action per LD that matches
        (its lowest capacity if several policies match)."""
        cols = [getattr(AdrPolicy, c) for c in POLICY_COLUMNS]
        base = (select(*cols, LogicalDevice.contract_amps)
                .join(LogicalDevice, LogicalDevice.ld_id == AdrPolicy.ld_id)
                .where(AdrPolicy.active.is_(True), AdrPolicy.deleted == false(), LogicalDevice.deleted == false()))
        pairs: list[tuple[Any, int]] = []  # (policy row with the policy's attributes, contract amps)
        if lds is None:
            pairs = [(r, r.contract_amps) for r in s.execute(base)]
        else:
            for chunk in _chunks(sorted(lds)):
                pairs += [(r, r.contract_amps) for r in s.execute(base.where(AdrPolicy.ld_id.in_(chunk)))]
        reasons: Counter[str] = Counter()
        if lds is not None:
            reasons["no active policy"] += len(lds - {p.ld_id for p, _ in pairs})
        monthly = self._month_counts(s, [p.ld_id for p, _ in pairs if p.max_events_per_month is not None],
                                     ev, now)
        best: dict[str, dict[str, Any]] = {}
        for p, contract in pairs:
            window = ev.window(p.ld_id, self.open_ended_s)
            v = evaluate(p, ev, contract_amps=contract or 0, window=window, received_at=now, tz=self.tz,
                         events_this_month=monthly.get(p.ld_id, 0))
            if v.amps is None:
                reasons[v.reason] += 1
                continue
            if p.ld_id not in best or v.amps < best[p.ld_id]["reduced_amps"]:
                best[p.ld_id] = {"adr_event_id": row_id, "policy_id": p.id, "ld_id": p.ld_id, "directed_at": now,
                                 "start_at": window[0], "end_at": window[1], "reduced_amps": v.amps,
                                 "restore_amps": contract or None, "state": "planned", "detail": None,
                                 "updated_at": now}
        planned = list(best.values())
        for chunk in _chunks(planned, 5000):
            s.execute(insert(AdrAction.__table__), list(chunk))  # core insert: no ORM objects
        return planned, reasons

    def _month_counts(self, s: Any, lds: list[str], ev: DrEvent, now: datetime) -> dict[str, int]:
        if not lds:
            return {}
        start = ev.dtstart.replace(day=1, hour=0, minute=0, second=0)
        end = (start + timedelta(days=32)).replace(day=1)
        out: dict[str, int] = {}
        for chunk in _chunks(sorted(set(lds))):
            q = (select(AdrAction.ld_id, func.count(func.distinct(AdrEvent.event_id)))
                 .join(AdrEvent, AdrEvent.id == AdrAction.adr_event_id)
                 .where(AdrAction.ld_id.in_(chunk), AdrAction.state.in_(("planned", "reserved")),
                        AdrAction.start_at >= start, AdrAction.start_at < end, AdrEvent.event_id != ev.event_id)
                 .group_by(AdrAction.ld_id))
            out.update({ld: n for ld, n in s.execute(q)})
        return out

    # the fan-out --------------------------------------------------------------------------------

    def _submit(self, lds: set[str], rows: Iterable[int],
                deferred: list[tuple[int, DrEvent, set[str] | None, datetime]] | None = None) -> _Job:
        loop = asyncio.get_running_loop()
        job = _Job(set(lds), {r: loop.create_future() for r in rows}, loop.create_future(), list(deferred or ()))
        self._pending.append(job)
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return job

    async def _work(self) -> None:
        while self._pending:
            jobs, self._pending = self._pending, []
            lds = set().union(*(j.lds for j in jobs))
            try:
                deferred = [d for j in jobs for d in j.deferred]
                if deferred:
                    lds |= await self.run(self._plan_deferred, deferred)
                await self._reconcile(lds, jobs)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad batch
                log.exception("ADR reconcile failed", extra={"lds": len(lds)})
            finally:
                for j in jobs:
                    for fut in j.first_success.values():
                        if not fut.done():
                            fut.set_result(False)
                    if j.done is not None and not j.done.done():
                        j.done.set_result(None)
        if self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every submitted reconcile has been carried out and recorded."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def resume(self) -> int:
        """After a restart: re-plan every metering point with live actions (idempotent: what is held
        stays, what is missing or failed is reserved again). Returns how many LDs were looked at."""
        lds = await self.run(self._live_lds, self.clock())
        if lds:
            await asyncio.shield(self._submit(lds, []).done)  # type: ignore[arg-type]
        return len(lds)

    def _live_lds(self, now: datetime) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(AdrAction.ld_id).where(AdrAction.state.in_(LIVE), AdrAction.end_at > now)
                                 .distinct()))

    async def _reconcile(self, lds: set[str], jobs: list[_Job]) -> None:
        """Plans are loaded a chunk at a time and each chunk's head-end calls start at once, so the
        first outcomes (which the opt answer may wait for) do not wait for the whole plan."""
        now = self.clock()
        sem = asyncio.Semaphore(self.settings.fanout_concurrency)
        done: asyncio.Queue[_Outcome | BaseException] = asyncio.Queue()

        async def one(ld_id: str, plan: _LdPlan, rows_of: dict[int, int]) -> None:
            try:
                async with sem:
                    await done.put(await self._apply(ld_id, plan, now, rows_of))
            except BaseException as e:  # noqa: BLE001 - handed to the collector, which re-raises
                await done.put(e)
                raise

        tasks: list[asyncio.Task[None]] = []
        ordered = sorted(lds)
        batch: list[_Outcome] = []
        flushed, received = time.monotonic(), 0
        try:
            for chunk in _chunks(ordered, 1000):
                plans, rows_of = await self.run(self._load_plans, list(chunk), now)
                tasks += [asyncio.create_task(one(ld, plan, rows_of)) for ld, plan in plans.items()]
            while received < len(tasks):
                out = await done.get()
                received += 1
                if isinstance(out, BaseException):
                    raise out
                for j in jobs:
                    for row in out.succeeded_rows:
                        f = j.first_success.get(row)
                        if f is not None and not f.done():
                            f.set_result(True)
                batch.append(out)
                if len(batch) >= 1000 or time.monotonic() - flushed > 0.5:
                    await self.run(self._record, batch, now)
                    batch, flushed = [], time.monotonic()
        finally:
            for t in tasks:
                t.cancel()
            if batch:
                await self.run(self._record, batch, now)

    def _load_plans(self, lds: list[str], now: datetime) -> tuple[dict[str, _LdPlan], dict[int, int]]:
        plans: dict[str, _LdPlan] = {}
        rows_of: dict[int, int] = {}
        accesses: dict[int, HeadEndAccess | str] = {}
        with self.db.session() as s:
            for chunk in _chunks(lds):
                meters = {r[0]: MeterRef(r[0], r[1], r[2], r[3]) for r in s.execute(
                    select(LogicalDevice.ld_id, LogicalDevice.physical_device_id, LogicalDevice.ld_address,
                           Concentrator.he_id)
                    .join(PhysicalDevice, PhysicalDevice.id == LogicalDevice.physical_device_id)
                    .join(Concentrator, Concentrator.id == PhysicalDevice.concentrator_id)
                    .where(LogicalDevice.ld_id.in_(chunk), LogicalDevice.deleted == false()))}
                for ld in chunk:
                    plans[ld] = _LdPlan(meters.get(ld), None, [], [])
                for a in s.execute(select(AdrAction.id, AdrAction.ld_id, AdrAction.start_at, AdrAction.end_at,
                                          AdrAction.reduced_amps, AdrAction.adr_event_id)
                                   .where(AdrAction.ld_id.in_(chunk), AdrAction.state.in_(LIVE),
                                          AdrAction.end_at > now)):
                    plans[a.ld_id].wants.append(Want(a.id, a.start_at, a.end_at, a.reduced_amps or 0))
                    rows_of[a.id] = a.adr_event_id
                for r in s.execute(select(AdrReservation.id, AdrReservation.ld_id, AdrReservation.reservation_id,
                                          AdrReservation.start_at, AdrReservation.end_at, AdrReservation.amps)
                                   .where(AdrReservation.ld_id.in_(chunk),
                                                                AdrReservation.state == "reserved",
                                                                AdrReservation.end_at > now)):
                    plans[r.ld_id].held.append(Held(r.id, r.reservation_id, r.start_at, r.end_at, r.amps))
        for ld, plan in plans.items():
            if plan.meter is None:
                plan.error = "the metering point has no installed meter"
                continue
            he = plan.meter.he_id
            if he not in accesses:
                try:
                    accesses[he] = self.head_ends.access(he)
                except Exception as e:  # noqa: BLE001 - a head-end that cannot be built fails its LDs only
                    accesses[he] = f"head-end {he} unavailable: {e}"
            got = accesses[he]
            if isinstance(got, str):
                plan.error = got
            else:
                plan.access = got
        return plans, rows_of

    async def _apply(self, ld_id: str, plan: _LdPlan, now: datetime, rows_of: dict[int, int]) -> _Outcome:
        """Cancel what no longer fits, reserve what is missing, and say how each live action stands."""
        out = _Outcome(ld_id, plan.meter)
        wanted = segments(plan.wants, now)
        d = diff(wanted, plan.held)
        failed: dict[Segment, str] = {}
        ok: dict[Segment, str] = {h.segment: h.reservation_id for h in d.keep}
        blocking: str | None = plan.error
        if blocking is None and plan.access is not None and plan.meter is not None:
            port, meter = plan.access.port, plan.meter
            for h in d.cancel:
                try:
                    await plan.access.call(port.cancel_reservation, meter, h.reservation_id)
                    out.cancelled.append(h.row_id)
                except HeadEndRejected as e:
                    if "ended" in str(e) or "no reservation" in str(e):
                        out.cancelled.append(h.row_id)  # nothing left to undo
                    else:
                        blocking = f"cancelling {h.reservation_id}: {e.code}: {e}"
                except HeadEndError as e:
                    blocking = f"cancelling {h.reservation_id}: {e.code}: {e}"
                except Exception as e:  # noqa: BLE001 - an adapter bug fails this LD only
                    blocking = f"cancelling {h.reservation_id}: {type(e).__name__}: {e}"
            for seg in d.reserve:
                if blocking is not None:
                    failed[seg] = blocking
                    continue
                try:
                    rid = await plan.access.call(port.reserve_contract, meter, seg.amps, seg.start, seg.end)
                    ok[seg] = str(rid)
                    out.reserved.append((seg, str(rid)))
                except HeadEndError as e:
                    failed[seg] = f"{e.code}: {e}"
                except Exception as e:  # noqa: BLE001
                    failed[seg] = f"adapter-error: {type(e).__name__}: {e}"
        else:
            failed = {seg: blocking or "no head-end" for seg in d.reserve}
        for w in plan.wants:
            segs = covering(w, wanted)
            errors = [failed[sg] for sg in segs if sg in failed]
            if errors:
                out.actions.append({"id": w.action_id, "state": "failed", "detail": errors[0][:2000],
                                    "updated_at": now})
            elif segs and all(sg in ok for sg in segs):
                out.actions.append({"id": w.action_id, "state": "reserved",
                                    "detail": "reservations " + ", ".join(ok[sg] for sg in segs),
                                    "updated_at": now})
                out.succeeded_rows.add(rows_of[w.action_id])
        return out

    def _record(self, batch: list[_Outcome], now: datetime) -> None:
        with self.db.session() as s:
            new = [{"ld_id": o.ld_id, "he_id": o.meter.he_id, "device_key": o.meter.device_key,
                    "ld_address": o.meter.ld_address, "start_at": seg.start, "end_at": seg.end, "amps": seg.amps,
                    "reservation_id": rid, "state": "reserved", "created_at": now, "updated_at": now}
                   for o in batch if o.meter is not None for seg, rid in o.reserved]
            if new:
                s.execute(insert(AdrReservation.__table__), new)
            cancelled = [rid for o in batch for rid in o.cancelled]
            for chunk in _chunks(cancelled):
                s.execute(update(AdrReservation).where(AdrReservation.id.in_(chunk))
                          .values(state="cancelled", updated_at=now), execution_options={"synchronize_session": False})
            actions = [a for o in batch for a in o.actions]
            if actions:
                s.execute(update(AdrAction), actions)

    # reading ----------------------------------------------------------------------------------

    def list_events(self, *, event_id: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        with self.db.session() as s:
            q = select(AdrEvent)
            if event_id is not None:
                q = q.where(AdrEvent.event_id == event_id)
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            rows = s.scalars(q.order_by(AdrEvent.id.desc()).limit(limit).offset(offset))
            return {"total": total, "items": [r.model_dump(mode="json") for r in rows]}

    def get_event(self, row_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(AdrEvent, row_id)
            if row is None:
                raise NotFound.on("id", f"ADR event {row_id} does not exist")
            view = row.model_dump(mode="json")
            view["actions"] = dict(s.execute(select(AdrAction.state, func.count()).where(
                AdrAction.adr_event_id == row_id).group_by(AdrAction.state)).all())
            return view

    def list_actions(self, *, event_id: str | None = None, ld_id: str | None = None, state: str | None = None,
                     starts_from: datetime | None = None, starts_before: datetime | None = None,
                     limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """ADR actions in order, with their event's ID and modification; ``starts_from`` and
        ``starts_before`` keep those whose reduction starts in that period (a billing period)."""
        with self.db.session() as s:
            q = select(AdrAction, AdrEvent.event_id, AdrEvent.modification_number).join(
                AdrEvent, AdrEvent.id == AdrAction.adr_event_id)
            if starts_from is not None:
                q = q.where(AdrAction.start_at >= starts_from)
            if starts_before is not None:
                q = q.where(AdrAction.start_at < starts_before)
            if event_id is not None:
                q = q.where(AdrEvent.event_id == event_id)
            if ld_id is not None:
                q = q.where(AdrAction.ld_id == ld_id)
            if state is not None:
                q = q.where(AdrAction.state == state)
            total = s.scalar(select(func.count()).select_from(q.subquery()))
            items = []
            for a, eid, mod in s.execute(q.order_by(AdrAction.id).limit(limit).offset(offset)):
                items.append({**a.model_dump(mode="json"), "event_id": eid, "modification_number": mod})
            return {"total": total, "items": items}

    def reservations(self, ld_id: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [r.model_dump(mode="json") for r in s.scalars(
                select(AdrReservation).where(AdrReservation.ld_id == ld_id).order_by(AdrReservation.id))]
