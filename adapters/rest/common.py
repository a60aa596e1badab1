"""Request parsing and response helpers shared by the REST resources."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.rest.problems import BadRequest, field_errors
from adapters.rest.text_guard import refuse_nul_body
from hub.runtime import Hub

M = TypeVar("M", bound=BaseModel)
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)


class Page(BaseModel):
    """Paging of every list: ``limit`` (1-1000) and ``offset``."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0)


def hub_of(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string against ``model``; unknown parameters are refused by name."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise BadRequest(400, "invalid-query", "Invalid query parameters",
                         "one or more query parameters are invalid", field_errors(exc)) from None


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "application/merge-patch+json"):
        raise BadRequest(415, "unsupported-media-type", "Unsupported media type",
                         f"expected application/json, got {request.content_type or 'nothing'}")
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, "malformed-json", "Malformed JSON", str(exc)) from None
    return refuse_nul_body(data)


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(422, "invalid-body", "Invalid request body",
                         "one or more fields are invalid", field_errors(exc)) from None


def path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(400, "invalid-path", "Invalid path parameter", f"{name} must be an integer",
                         ) from None


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def page(items: list[Any], total: int) -> web.Response:
    return ok({"items": items, "total": total})


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, ensure_ascii=False)
