"""RFC 9457 problem documents for every error the REST edge returns, and the middleware that makes
sure a caller never sees a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hub.services.errors import Conflict, FieldError, InvalidInput, NotFound, ServiceError

log = logging.getLogger("mdmhub.rest")
PROBLEM_TYPE_BASE = "urn:mdmhub:problem:"

_SERVICE_STATUS: list[tuple[type[ServiceError], int, str, str]] = [
    (NotFound, 404, "not-found", "Not found"),
    (Conflict, 409, "conflict", "Conflict with the stored state"),
    (InvalidInput, 422, "invalid-input", "Invalid input"),
]


def problem(status: int, slug: str, title: str, detail: str | None = None,
            errors: list[FieldError] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = [{k: v for k, v in e.__dict__.items() if v is not None} for e in errors]
    body.update(extra)
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        out.append(FieldError(prefix + loc, err["msg"]))
    return out


class BadRequest(Exception):
    """Raised by request parsing helpers; rendered as a 400/415/422 problem."""

    def __init__(self, status: int, slug: str, title: str, detail: str | None = None,
                 errors: list[FieldError] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.slug, self.title, self.detail, self.errors = status, slug, title, detail, errors


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        log.info("bad request", extra={"path": request.path, "detail": exc.detail})
        return problem(exc.status, exc.slug, exc.title, exc.detail, exc.errors, instance=request.path)
    except ServiceError as exc:
        for cls, status, slug, title in _SERVICE_STATUS:
            if isinstance(exc, cls):
                log.info("request refused", extra={"path": request.path, "status": status, "detail": exc.message})
                return problem(status, slug, title, exc.message, exc.errors, instance=request.path)
        log.warning("service error", extra={"path": request.path, "detail": exc.message})
        return problem(400, "bad-request", "Bad request", exc.message, exc.errors, instance=request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(exc.status, "http-error")
        return problem(exc.status, slug, exc.reason, exc.text if exc.text != f"{exc.status}: {exc.reason}" else None,
                       instance=request.path)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem(500, "internal-error", "Internal server error",
                       "the request failed inside the hub; it has been logged", instance=request.path)
