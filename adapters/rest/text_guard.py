"""Refuse NUL characters in what a request names (path, query) or sends as JSON.

No identifier, filter or field of the hub holds a NUL, and PostgreSQL cannot even compare text with
one: left to the store, ``?group=a%00b`` would fail inside the hub on PostgreSQL and silently match
nothing on SQLite. Refusing it at the edge gives both stores the same clean 400.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from adapters.rest.problems import BadRequest

NUL = "\x00"


def has_nul(value: Any) -> bool:
    """Whether a decoded JSON value holds a NUL in any string (keys included)."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def refuse_nul_body(value: Any) -> Any:
    """``value`` itself, or a 400 problem when a string in it holds a NUL."""
    if has_nul(value):
        raise BadRequest(400, "invalid-characters", "Invalid characters", "text may not contain NUL characters")
    return value


def refuse_nul_request(request: web.Request) -> None:
    """A 400 problem when the decoded path or query of ``request`` holds a NUL."""
    if NUL in request.path or any(NUL in k or NUL in v for k, v in request.query.items()):
        raise BadRequest(400, "invalid-characters", "Invalid characters",
                         "the path and query may not contain NUL characters")


CHECKS_TEXT = "checks_request_text"
"""Attribute of a handler that calls :func:`refuse_nul_request` itself (so its refusal is in the
access log, as adapters.auth.guarded does); the middleware leaves such handlers alone."""


@web.middleware
async def refuse_nul(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every other route: the same refusal before the handler runs."""
    if not getattr(request.match_info.handler, CHECKS_TEXT, False):
        refuse_nul_request(request)
    return await handler(request)
