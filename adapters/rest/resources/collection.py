"""Collection: the scheduler's state, the runs it made, and cycles or re-collection started by hand."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from adapters.rest.common import Page, hub_of, ok, page, parse_body, parse_query, path_int
from adapters.rest.problems import BadRequest
from adapters.rest.routing import ApiRoutes
from hub.runtime import Hub
from hub.services.collection_runs import RunFilter

routes = ApiRoutes()


class RunQuery(RunFilter, Page):
    """Run filters plus paging; latest slot first."""


class CollectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: AwareDatetime | None = Field(None, description="Snapshot time on the 30-minute grid; default the "
                                       "current slot")
    force: bool = Field(False, description="Run a slot that already finished again (what is stored stays)")


class RecollectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    he_id: int | None = Field(None, description="One head-end only; default all")


def _require_head_ends(hub: Hub) -> None:
    if not hub.head_ends.available:
        raise BadRequest(503, "head-ends-unavailable", "Head-ends unavailable",
                         "this hub was started without head-end adapters")


@routes.get("/api/v1/collection/status", tag="collection",
            summary="The collection scheduler: interval, next tick, last runs per head-end, last re-collection")
async def collection_status(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok({"enabled": hub.settings.collection.enabled, "head_ends_available": hub.head_ends.available,
               **hub.scheduler.status()})


@routes.get("/api/v1/collection/runs", tag="collection", query=RunQuery,
            summary="Collection runs (scheduled, backfill, recollect) with what each stored, latest first")
async def list_runs(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, RunQuery)
    items, total = await hub.run(hub.collection.runs.list, q, q.limit, q.offset)
    return page(items, total)


@routes.post("/api/v1/head-ends/{he_id}/collection", tag="collection", body=CollectIn,
             summary="Collect one slot of a head-end now (a finished slot is not run again unless forced)",
             responses={404: "no such head-end", 503: "no head-end adapters"})
async def collect_now(request: web.Request) -> web.Response:
    hub = hub_of(request)
    he_id = path_int(request, "he_id")
    body = await parse_body(request, CollectIn) if request.can_read_body else CollectIn()
    _require_head_ends(hub)
    await hub.run(hub.head_ends.spec, he_id)  # 404 for an unknown head-end
    slot: datetime | None = body.slot
    return ok(await hub.collection.collect(he_id, slot, force=body.force))


@routes.post("/api/v1/collection/recollections", tag="collection", body=RecollectIn,
             summary="Re-read missing rows from the meters' memory now; report what was filled and what expired",
             responses={404: "no such head-end", 503: "no head-end adapters"})
async def recollect_now(request: web.Request) -> web.Response:
    hub = hub_of(request)
    body = await parse_body(request, RecollectIn) if request.can_read_body else RecollectIn()
    _require_head_ends(hub)
    if body.he_id is not None:
        await hub.run(hub.head_ends.spec, body.he_id)
    return ok(await hub.collection.recollect(he_id=body.he_id))


__all__ = ["routes"]
