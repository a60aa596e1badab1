"""A route table that also describes itself: every route registered here appears in the OpenAPI
document, with its request body and query models taken from the pydantic models it validates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_media: tuple[str, ...] = ("application/json",)
    query: type[BaseModel] | None = None
    status: int = 200
    responses: dict[int, str] = field(default_factory=dict)


class ApiRoutes:
    """Collects operations; :meth:`install` adds them to an aiohttp app."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, tag: str, body: type[BaseModel] | None = None,
              body_media: tuple[str, ...] = ("application/json",), query: type[BaseModel] | None = None,
              status: int = 200, responses: dict[int, str] | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method.upper(), path, handler, summary, tag, body, body_media,
                                             query, status, responses or {}))
            return handler
        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
