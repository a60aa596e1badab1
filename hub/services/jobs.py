"""Mass reboot (seed 2.3.10): a background job that restarts the comms unit of every device a device
search finds, at the lowest head-end priority, with progress readable while it runs and a cancel.

The caller gets the job at once (``queued``, with the number of devices); the hub then sends the
reboots through each device's head-end, ``reboot_workers`` queued at a time. The throttle lets
reboots hold only ``reboot_share`` of a head-end's or concentrator's slots, behind controls,
collection and re-collection, so the 30-minute cycle carries on while a job runs.

Devices are comms units: a meter with several metering points is rebooted once (through its first
metering point). Progress (``done``, ``failed``) is written every ``progress_every`` results and
at least every second; each device's result is a row of the controls history under the job's id,
and a device the command did not reach raises a ``control.reboot-failed`` alert, which goes to the
NMS like every alert (the seed's operators learn of failed sends from syslog).

Cancelling stops the job from sending more: reboots waiting for a slot are dropped, those in flight
finish, and the job ends ``cancelled``. A job left ``running`` by a hub that stopped is reported
``interrupted`` by :meth:`RebootJobs.interrupted` when the next hub starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from hub.config import ControlsSection
from hub.db import Database, utcnow
from hub.headends import HeadEndAccess
from hub.model import Concentrator
from hub.model.controls import JOB_STATES, ControlAction, ControlJob
from hub.ports import HeadEndError, MeterRef
from hub.services.controls import (
    ControlRecord,
    ControlService,
    ControlTarget,
    HeadEndFailure,
    outcome_of,
)
from hub.services.diagnosis import AlertDraft
from hub.services.errors import Conflict, NotFound
from hub.services.search import LogicalDeviceFilter, SearchService
from hub.throttle import Priority

log = logging.getLogger("mdmhub.jobs")
RunBlocking = Callable[..., Awaitable[Any]]
SEARCH_PAGE = 1000
PROGRESS_SECONDS = 1.0
FINAL_STATES = ("done", "cancelled", "failed", "interrupted")


class RebootJobIn(BaseModel):
    """A mass reboot over a device search (the same filters as ``GET /api/v1/logical-devices``);
    only installed devices are rebooted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    search: LogicalDeviceFilter = Field(default_factory=LogicalDeviceFilter)
    actor: str = Field("api", min_length=1, max_length=128)
    reason: str | None = Field(None, max_length=512)
    max_devices: int | None = Field(None, ge=1, description="refuse the job if the search finds more devices "
                                                            "than this (a guard against an unintended filter)")


class JobFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal[JOB_STATES] | None = None  # type: ignore[valid-type]
    kind: Literal["reboot"] | None = None


@dataclass
class _Run:
    """A job running in this process."""

    task: asyncio.Task[None]
    cancel: bool = False
    waiting: set[asyncio.Task[Any]] | None = None


class RebootJobs:
    def __init__(self, db: Database, settings: ControlsSection, search: SearchService, controls: ControlService,
                 run_blocking: RunBlocking, alerts: Any = None) -> None:
        self.db = db
        self.settings = settings
        self.search = search
        self.controls = controls
        self.alerts = alerts
        self._run = run_blocking
        self._running: dict[int, _Run] = {}

    # API ---------------------------------------------------------------------------------------

    async def start(self, data: RebootJobIn) -> dict[str, Any]:
        """List the devices, store the job and start it in the background; the job's view."""
        targets = await self._run(self.targets, data.search)
        if data.max_devices is not None and len(targets) > data.max_devices:
            raise Conflict.on("max_devices", f"the search finds {len(targets)} devices, more than max_devices "
                                             f"{data.max_devices}; narrow the search or raise the bound")
        job_id = await self._run(self._create, data, len(targets))
        task = asyncio.get_running_loop().create_task(self._execute(job_id, targets, data.actor, data.reason),
                                                      name=f"reboot-job-{job_id}")
        self._running[job_id] = _Run(task, waiting=set())
        task.add_done_callback(lambda _: self._running.pop(job_id, None))
        log.info("mass reboot started", extra={"job_id": job_id, "devices": len(targets), "actor": data.actor})
        return await self._run(self.get, job_id)

    async def cancel(self, job_id: int) -> dict[str, Any]:
        """Stop sending: queued reboots are dropped, those in flight finish. Conflict when the job
        has already ended."""
        view = await self._run(self.get, job_id)
        if view["state"] in FINAL_STATES:
            raise Conflict.on("state", f"job {job_id} has already ended ({view['state']})")
        running = self._running.get(job_id)
        if running is None:  # started by a hub that is gone
            await self._run(self._set_state, job_id, "interrupted", finished=True,
                            error="no hub is running this job any more")
            return await self._run(self.get, job_id)
        running.cancel = True
        for task in list(running.waiting or ()):
            task.cancel()
        await self._run(self._set_state, job_id, "cancelling")
        return await self._run(self.get, job_id)

    async def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job ends (tests, CLI); its view."""
        running = self._running.get(job_id)
        if running is not None:
            await asyncio.wait_for(asyncio.shield(running.task), timeout)
        return await self._run(self.get, job_id)

    def get(self, job_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            job = s.get(ControlJob, job_id)
            if job is None:
                raise NotFound.on("job_id", f"job {job_id} does not exist")
            failures = s.execute(
                select(ControlAction.ld_id, ControlAction.pd_id, ControlAction.outcome, ControlAction.error_code,
                       ControlAction.detail)
                .where(ControlAction.job_id == job_id, ControlAction.outcome != "done")
                .order_by(ControlAction.id).limit(self.settings.failures_shown)).all()
            return _job_view(job, [{"ld_id": ld, "pd_id": pd, "outcome": o, "error_code": c, "detail": d}
                                   for ld, pd, o, c, d in failures])

    def list(self, f: JobFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        where = []
        if f.state is not None:
            where.append(ControlJob.state == f.state)
        if f.kind is not None:
            where.append(ControlJob.kind == f.kind)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(ControlJob).where(*where)) or 0
            rows = s.scalars(select(ControlJob).where(*where).order_by(ControlJob.id.desc()).limit(limit).offset(offset))
            return [_job_view(j, None) for j in rows], total

    def interrupted(self) -> int:
        """Mark jobs a previous hub left unfinished ``interrupted`` (call once at start); how many."""
        with self.db.session() as s:
            result = s.execute(update(ControlJob).where(ControlJob.state.in_(("queued", "running", "cancelling")))
                               .values(state="interrupted", finished_at=utcnow(), updated_at=utcnow(),
                                       error="the hub stopped while the job ran"))
            return result.rowcount or 0

    # targets -----------------------------------------------------------------------------------

    def targets(self, f: LogicalDeviceFilter) -> list[ControlTarget]:
        """The comms units the search finds (installed metering points only, one per device)."""
        f = f.model_copy(update={"installed": True, "deleted": False, "exact_total": False})
        with self.db.session() as s:
            holding = set(s.scalars(select(Concentrator.co_id).where(Concentrator.is_dummy.is_(True))))
        seen: set[int] = set()
        out: list[ControlTarget] = []
        offset = 0
        while True:
            page = self.search.logical_devices(f, SEARCH_PAGE, offset)
            for item in page.items:
                key = item["physical_device_id"]
                if key in seen or item["ld_id"] is None:
                    continue
                seen.add(key)
                out.append(ControlTarget(MeterRef(item["ld_id"], key, item["ld_address"], item["he_id"]),
                                         item.get("pd_id"), None if item.get("co_id") in holding else item.get("co_id")))
            if len(page.items) < SEARCH_PAGE:
                return out
            offset += SEARCH_PAGE

    # running -----------------------------------------------------------------------------------

    async def _execute(self, job_id: int, targets: list[ControlTarget], actor: str, reason: str | None) -> None:
        await asyncio.sleep(0)  # let start() register the run first
        run = self._running.get(job_id) or _Run(asyncio.current_task(), waiting=set())  # type: ignore[arg-type]
        progress = _Progress(self, job_id, actor, reason)
        try:
            await self._run(self._set_state, job_id, "running", started=True)
            accesses: dict[int, HeadEndAccess | HeadEndFailure] = {}
            for he_id in sorted({t.he_id for t in targets}):
                try:
                    accesses[he_id] = await self.controls.access(he_id)
                except HeadEndFailure as e:
                    accesses[he_id] = e
                except Exception as e:  # noqa: BLE001 - a head-end row gone since the search
                    accesses[he_id] = HeadEndFailure.of("unavailable", "adapter-error", str(e))
            queue = iter(targets)

            async def worker() -> None:
                me = asyncio.current_task()
                assert me is not None and run.waiting is not None
                for target in queue:
                    if run.cancel:
                        return
                    await self._reboot_one(job_id, target, accesses[target.he_id], run, me, progress)

            workers = [asyncio.ensure_future(worker()) for _ in range(min(self.settings.reboot_workers, len(targets)))]
            results = await asyncio.gather(*workers, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
            await progress.flush(force=True)
            state = "cancelled" if run.cancel else "done"
            await self._run(self._set_state, job_id, state, finished=True)
            log.info("mass reboot ended", extra={"job_id": job_id, "state": state, "done": progress.done,
                                                 "failed": progress.failed})
        except BaseException as e:
            stopped = not isinstance(e, Exception)  # the hub is shutting down
            if stopped:
                log.warning("mass reboot interrupted", extra={"job_id": job_id})
            else:
                log.exception("mass reboot failed", extra={"job_id": job_id})
            await asyncio.shield(progress.flush(force=True))
            await asyncio.shield(self._run(self._set_state, job_id, "interrupted" if stopped else "failed",
                                           finished=True, error=f"{type(e).__name__}: {e}"))
            if stopped:
                raise

    async def _reboot_one(self, job_id: int, target: ControlTarget, access: HeadEndAccess | HeadEndFailure,
                          run: _Run, me: asyncio.Task[Any], progress: _Progress) -> None:
        started = self.controls.clock()
        outcome, code, detail = "done", None, None
        if isinstance(access, HeadEndFailure):
            outcome, code, detail = "failed", access.code, access.message
        else:
            assert run.waiting is not None
            run.waiting.add(me)
            try:
                async with access.slot(Priority.REBOOT, target.concentrator):
                    run.waiting.discard(me)
                    if run.cancel:
                        return
                    try:
                        await access.request(access.port.reboot, target.meter)
                    except HeadEndError as e:
                        outcome, code, detail = outcome_of(e), e.code, str(e)
                    except Exception as e:  # noqa: BLE001 - an adapter bug fails this device only
                        log.exception("reboot failed in the adapter", extra={"ld_id": target.ld_id})
                        outcome, code, detail = "failed", "adapter-error", f"{type(e).__name__}: {e}"
            finally:
                run.waiting.discard(me)
        await progress.add(ControlRecord(target, "reboot", outcome, progress.actor, started, self.controls.clock(),
                                         reason=progress.reason, job_id=job_id, error_code=code, detail=detail))

    # store -------------------------------------------------------------------------------------

    def _create(self, data: RebootJobIn, total: int) -> int:
        with self.db.session() as s:
            job = ControlJob(kind="reboot", state="queued", search=data.search.model_dump(mode="json", exclude_defaults=True),
                             actor=data.actor, reason=data.reason, total=total)
            s.add(job)
            s.flush()
            assert job.id is not None
            return job.id

    def _set_state(self, job_id: int, state: str, *, started: bool = False, finished: bool = False,
                   error: str | None = None) -> None:
        values: dict[str, Any] = {"state": state, "updated_at": utcnow()}
        if started:
            values["started_at"] = utcnow()
        if finished:
            values["finished_at"] = utcnow()
        if error is not None:
            values["error"] = error
        with self.db.session() as s:
            s.execute(update(ControlJob).where(ControlJob.id == job_id).values(**values))

    def _store_progress(self, job_id: int, records: list[ControlRecord]) -> None:
        """Write a batch of device results and the job's counters in one transaction."""
        done = sum(r.outcome == "done" for r in records)
        with self.db.session() as s:
            if records:
                s.execute(ControlAction.__table__.insert(), [r.row() for r in records])
            s.execute(update(ControlJob).where(ControlJob.id == job_id)
                      .values(done=ControlJob.done + done, failed=ControlJob.failed + len(records) - done,
                              updated_at=utcnow()))

    def _alert(self, job_id: int, records: list[ControlRecord]) -> None:
        failed = [r for r in records if r.outcome != "done"]
        if failed and self.alerts is not None:
            self.alerts.raise_alerts([
                AlertDraft(code="control.reboot-failed", severity="warning",
                           message=f"reboot of {r.target.pd_id or r.target.ld_id} ({r.target.ld_id}) did not reach "
                                   f"the device: {r.error_code}", ld_id=r.target.ld_id, he_id=r.target.he_id,
                           details={"job_id": job_id, "error_code": r.error_code, "detail": r.detail,
                                    "outcome": r.outcome}, source="mdmhub.controls")
                for r in failed])


class _Progress:
    """A job's results waiting to be written, flushed by count or by time."""

    def __init__(self, jobs: RebootJobs, job_id: int, actor: str, reason: str | None) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.pending: list[ControlRecord] = []
        self.done = 0
        self.failed = 0
        self.actor = actor
        self.reason = reason
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def add(self, record: ControlRecord) -> None:
        self.pending.append(record)
        if record.outcome == "done":
            self.done += 1
        else:
            self.failed += 1
        await self.flush()

    async def flush(self, force: bool = False) -> None:
        due = len(self.pending) >= self.jobs.settings.progress_every or time.monotonic() - self._last >= PROGRESS_SECONDS
        if not (force or due) or (not self.pending and not force):
            return
        async with self._lock:
            batch, self.pending = self.pending, []
            self._last = time.monotonic()
            if not batch:
                return
            await self.jobs._run(self.jobs._store_progress, self.job_id, batch)
            try:
                await self.jobs._run(self.jobs._alert, self.job_id, batch)
            except Exception:  # noqa: BLE001 - alerts are best effort; the results are stored
                log.exception("reboot failure alerts not raised", extra={"job_id": self.job_id})


def _job_view(job: ControlJob, failures: list[dict[str, Any]] | None) -> dict[str, Any]:
    view = job.model_dump(mode="json")
    view["pending"] = max(0, job.total - job.done - job.failed)
    if failures is not None:
        view["failures"] = failures
    return view

