"""Bookkeeping of collection runs: which cycles ran, are running (or were killed while running), and
what they stored. A run is keyed by head-end, kind and slot, so a cycle is found again by whoever
runs it next."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Table, func, select, update

from hub.db import Database, utcnow
from hub.model import CollectionRun
from hub.services.usage_writer import insert_ignore, utc

log = logging.getLogger("mdmhub.collection")
RUNS: Table = CollectionRun.__table__  # type: ignore[attr-defined]
RunKind = Literal["scheduled", "backfill", "recollect"]
COUNTERS = ("targets", "expected", "normal", "missing", "recollected", "expired", "alerts")


class RunFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    he_id: int | None = Field(None, description="head-end")
    kind: RunKind | None = Field(None, description="scheduled, backfill or recollect")
    state: Literal["running", "done", "failed"] | None = None
    since: AwareDatetime | None = Field(None, description="runs of slots at or after this time")


def run_view(run: CollectionRun) -> dict[str, Any]:
    return run.model_dump(mode="json")


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with the view of every run that finished ``done`` (edges that publish collected
        reads, e.g. 61968-9 ``created MeterReadings``); a failing listener is logged, never raised."""

    def begin(self, he_id: int, kind: RunKind, slot: datetime, *, force: bool = False) -> tuple[int, bool]:
        """The run of ``(he_id, kind, slot)``, created if new; ``(id, False)`` when it already
        finished and ``force`` is not set (nothing to do), else it is (re)started: ``(id, True)``."""
        slot = utc(slot)
        with self.db.session() as s:
            conn = s.connection()
            insert_ignore(conn, RUNS, [{"he_id": he_id, "kind": kind, "slot_time": slot, "state": "running",
                                        "failures": {}, "started_at": utcnow(),
                                        **{name: 0 for name in COUNTERS}}])
            run_id, state = conn.execute(select(RUNS.c.id, RUNS.c.state).where(
                RUNS.c.he_id == he_id, RUNS.c.kind == kind, RUNS.c.slot_time == slot)).one()
            if state == "done" and not force:
                return run_id, False
            conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(
                state="running", started_at=utcnow(), finished_at=None, error=None, failures={},
                **{name: 0 for name in COUNTERS}))
            return run_id, True

    def finish(self, run_id: int, *, state: str = "done", failures: dict[str, int] | None = None,
               error: str | None = None, **counters: int) -> dict[str, Any]:
        with self.db.session() as s:
            run = s.get(CollectionRun, run_id)
            assert run is not None
            run.state, run.error, run.finished_at = state, error, utcnow()
            run.failures = dict(failures or {})
            for name, value in counters.items():
                setattr(run, name, value)
            s.add(run)
            s.flush()
            view = run_view(run)
        if state == "done":
            for listener in self.listeners:
                try:
                    listener(view)
                except Exception:  # noqa: BLE001 - publishing must not fail the cycle that was stored
                    log.warning("collection run listener failed", exc_info=True, extra={"run_id": run_id})
        return view

    def get(self, run_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            run = s.get(CollectionRun, run_id)
            assert run is not None
            return run_view(run)

    def last_slot(self, he_id: int, kinds: tuple[str, ...] = ("scheduled", "backfill")) -> datetime | None:
        """The latest slot a finished run of ``kinds`` covered for the head-end."""
        with self.db.session() as s:
            return s.execute(select(func.max(RUNS.c.slot_time)).where(
                RUNS.c.he_id == he_id, RUNS.c.kind.in_(kinds), RUNS.c.state == "done")).scalar()

    def close_interrupted(self, he_id: int, up_to: datetime, started_before: datetime) -> int:
        """Runs of slots up to ``up_to`` left ``running`` by a process that stopped (started before
        ``started_before``), whose slots a later run covered: marked failed."""
        with self.db.session() as s:
            return s.execute(update(RUNS).where(
                RUNS.c.he_id == he_id, RUNS.c.state == "running", RUNS.c.kind.in_(("scheduled", "backfill")),
                RUNS.c.slot_time <= up_to, RUNS.c.started_at < started_before,
            ).values(state="failed", error="interrupted; a later run covered its slots",
                     finished_at=utcnow())).rowcount

    def list(self, f: RunFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Runs, latest slot first."""
        conds = []
        if f.he_id is not None:
            conds.append(RUNS.c.he_id == f.he_id)
        if f.kind is not None:
            conds.append(RUNS.c.kind == f.kind)
        if f.state is not None:
            conds.append(RUNS.c.state == f.state)
        if f.since is not None:
            conds.append(RUNS.c.slot_time >= f.since)
        with self.db.session() as s:
            total = s.execute(select(func.count()).select_from(RUNS).where(*conds)).scalar_one()
            rows = s.scalars(select(CollectionRun).where(*conds)
                             .order_by(RUNS.c.slot_time.desc(), RUNS.c.he_id, RUNS.c.kind)
                             .limit(limit).offset(offset)).all()
            return [run_view(r) for r in rows], total
