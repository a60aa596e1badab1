"""Meter controls over REST: relay, contract capacity, live status and reboot of one metering point
(synchronous: the answer carries the meter's live status), mass reboot jobs with progress and
cancel, and the controls history.

Head-end failures are problem documents: a head-end that does not answer in time is 504, one that
cannot be reached (or does not know the device) 502, a hub without head-end adapters 503; a meter
that refuses the command, and a capacity cut below the live load, are 409 (the latter with the
live status in the body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, path_int
from adapters.rest.problems import problem
from adapters.rest.routing import ApiRoutes
from hub.services.controls import (
    CapacityRefused,
    ContractIn,
    ControlFilter,
    ControlIn,
    ControlRejected,
    HeadEndFailure,
    RelayIn,
    status_view,
)
from hub.services.jobs import JobFilter, RebootJobIn

routes = ApiRoutes()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FAILURE_STATUS = {"timeout": (504, "head-end-timeout", "Head-end timeout"),
                   "not-configured": (503, "head-ends-not-configured", "Head-ends not configured"),
                   "unavailable": (502, "head-end-unavailable", "Head-end unavailable")}
_HEAD_END_RESPONSES = {404: "no such logical device", 409: "disposed, or refused by the meter",
                       502: "head-end unreachable or does not know the device", 503: "no head-end adapters",
                       504: "head-end did not answer in time"}


def controls_problems(handler: Handler) -> Handler:
    """Render the controls' own failures as problem documents (the rest go to the middleware)."""

    @wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CapacityRefused as e:
            return problem(409, "capacity-below-load", "Contract capacity below the live load", e.message,
                           instance=request.path, requested_amps=e.requested_amps,
                           live_load_amps=e.status.load_amps, contract_amps=e.status.contract_amps,
                           live_status=status_view(e.status))
        except ControlRejected as e:
            return problem(409, "rejected-by-meter", "Refused by the meter", e.message, instance=request.path,
                           head_end_error=e.code)
        except HeadEndFailure as e:
            status, slug, title = _FAILURE_STATUS.get(e.kind, _FAILURE_STATUS["unavailable"])
            return problem(status, slug, title, e.message, instance=request.path, head_end_error=e.code)
    return wrapped


class ControlQuery(ControlFilter, Page):
    """Controls history filters plus paging; newest first."""


class JobQuery(JobFilter, Page):
    """Job filters plus paging; newest first."""


@routes.post("/api/v1/logical-devices/{ld_id}/relay", tag="controls", body=RelayIn, responses=_HEAD_END_RESPONSES,
             summary="Supply on or off (relay); waits for the meter and answers with its live status")
@controls_problems
async def post_relay(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, RelayIn)
    return ok(await hub.controls.relay(request.match_info["ld_id"], data))


@routes.post("/api/v1/logical-devices/{ld_id}/contract-capacity", tag="controls", body=ContractIn,
             responses={**_HEAD_END_RESPONSES, 409: "the live load is above the new capacity (body: live load)"},
             summary="Change the contract capacity; lowering below the live load is refused unless forced")
@controls_problems
async def post_contract(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ContractIn)
    return ok(await hub.controls.contract(request.match_info["ld_id"], data))


@routes.get("/api/v1/logical-devices/{ld_id}/live-status", tag="controls", responses=_HEAD_END_RESPONSES,
            summary="Live status through the head-end: load, relay, contract capacity, clock")
@controls_problems
async def get_live_status(request: web.Request) -> web.Response:
    hub = hub_of(request)
    actor = request.headers.get("X-Actor", "api")[:128] or "api"
    result = await hub.controls.status(request.match_info["ld_id"], ControlIn(actor=actor))
    return ok({**result["status"], "control_id": result["control"]["id"]})


@routes.post("/api/v1/logical-devices/{ld_id}/reboot", tag="controls", body=ControlIn, responses=_HEAD_END_RESPONSES,
             summary="Restart the comms unit of this metering point's meter")
@controls_problems
async def post_reboot(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, ControlIn) if request.can_read_body else ControlIn()
    return ok(await hub.controls.reboot(request.match_info["ld_id"], data))


@routes.get("/api/v1/controls", tag="controls", query=ControlQuery,
            summary="Controls history (who, when, what, outcome), newest first")
async def list_controls(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, ControlQuery)
    items, total = await hub.run(hub.controls.history, q, q.limit, q.offset)
    return page(items, total)


@routes.get("/api/v1/controls/{id}", tag="controls", summary="One control")
async def get_control(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.controls.get, path_int(request, "id")))


@routes.post("/api/v1/jobs/reboots", tag="jobs", body=RebootJobIn, status=202,
             responses={409: "the search finds more devices than max_devices"},
             summary="Mass reboot of the devices a search finds, as a background job; answers at once")
async def post_reboot_job(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, RebootJobIn)
    job = await hub.reboot_jobs.start(data)
    response = ok(job, status=202)
    response.headers["Location"] = f"/api/v1/jobs/{job['id']}"
    return response


@routes.get("/api/v1/jobs", tag="jobs", query=JobQuery, summary="Background jobs, newest first")
async def list_jobs(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, JobQuery)
    items, total = await hub.run(hub.reboot_jobs.list, q, q.limit, q.offset)
    return page(items, total)


@routes.get("/api/v1/jobs/{id}", tag="jobs",
            summary="A job's progress: state, total, done, failed, pending and the first per-device failures")
async def get_job(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.reboot_jobs.get, path_int(request, "id")))


@routes.post("/api/v1/jobs/{id}/cancel", tag="jobs", status=202, responses={409: "the job has already ended"},
             summary="Cancel a job: nothing more is sent, commands in flight finish")
async def cancel_job(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.reboot_jobs.cancel(path_int(request, "id")), status=202)


@routes.get("/api/v1/head-ends/{he_id}/throttle", tag="controls",
            summary="Head-end request slots in use and waiting, by priority, and the limits")
@controls_problems
async def get_throttle(request: web.Request) -> web.Response:
    hub = hub_of(request)
    access = await hub.controls.access(path_int(request, "he_id"))
    return ok(access.throttle.snapshot())
