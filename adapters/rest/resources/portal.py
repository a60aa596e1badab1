"""Customer portal data API (/api/v1/portal/...): what the portal front end and display terminals
call. Accounts log in with user ID (e-mail) and password and get a bearer token; the portal back end
(an API client with ``portal:admin``) registers accounts and issues temporary passwords."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from adapters.auth import caller_of, credential_of, guarded, record_access, refusal
from adapters.rest.common import hub_of, ok, parse_body, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.access import AccountIn, Unauthenticated
from hub.services.portal import AccountAdminPatch, AccountPatch, HistoryQuery, PolicyIn, PolicyPatch, TerminalIn
from hub.services.public import SeriesQuery

routes = ApiRoutes()
AUTH = {401: "not logged in", 403: "not allowed for this account or terminal"}


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


@routes.post("/api/v1/portal/login", tag="portal", body=LoginIn, responses={401: "login refused"},
             summary="Log in with user ID (e-mail) and password; failures never say which was wrong")
async def login(request: web.Request) -> web.Response:
    hub = hub_of(request)
    status = 500
    claimed: str | None = None
    try:
        data = await parse_body(request, LoginIn)
        claimed = data.user_id[:256]
        result = await hub.run(hub.access.login, data.user_id, data.password)
        status = 200
        return ok(result)
    except Unauthenticated as exc:
        status = 401
        return refusal(exc, request.path)
    except Exception as exc:
        status = getattr(exc, "status", 500)
        raise
    finally:
        await _record_login(request, hub, claimed, status)


async def _record_login(request: web.Request, hub, claimed: str | None, status: int) -> None:  # type: ignore[no-untyped-def]
    try:
        await hub.run(hub.access.record, None, "portal", "POST", request.path, status,
                      "login" if status == 200 else "login refused", request.remote, claimed)
    except Exception:  # noqa: BLE001
        await record_access(request, hub, None, "portal", status, "login")


@routes.post("/api/v1/portal/logout", tag="portal", status=204, responses=AUTH, summary="End this login")
@guarded("portal")
async def logout(request: web.Request) -> web.Response:
    hub = hub_of(request)
    await hub.run(hub.access.logout, credential_of(request) or "")
    return web.Response(status=204)


@routes.post("/api/v1/portal/password", tag="portal", body=PasswordChange, status=204, responses=AUTH,
             summary="Change the password (required after a temporary password); ends other logins")
@guarded("portal")
async def change_password(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, PasswordChange)
    await hub.run(hub.access.change_password, caller_of(request), data.current_password, data.new_password)
    return web.Response(status=204)


@routes.post("/api/v1/portal/accounts", tag="portal", body=AccountIn, status=201, responses=AUTH,
             summary="Register an account for an existing customer (portal back end, portal:admin)")
@guarded("portal", "portal:admin")
async def register(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, AccountIn)
    return ok(await hub.run(hub.portal.register, caller_of(request), data), status=201)


@routes.patch("/api/v1/portal/accounts/{user_id}", tag="portal", body=AccountAdminPatch, responses=AUTH,
              summary="Change an account's user ID, edit rights or state (portal:admin)")
@guarded("portal", "portal:admin")
async def admin_edit(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, AccountAdminPatch)
    return ok(await hub.run(hub.portal.admin_edit, caller_of(request), request.match_info["user_id"], data))


@routes.post("/api/v1/portal/accounts/{user_id}/temporary-password", tag="portal", responses=AUTH,
             summary="Issue a temporary password (expires; must be changed at login) for the portal to mail")
@guarded("portal", "portal:admin")
async def temporary_password(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.access.issue_temporary_password, request.match_info["user_id"]))


@routes.get("/api/v1/portal/me", tag="portal", responses=AUTH, summary="The logged-in account and its metering points")
@guarded("portal")
async def me(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.portal.me, caller_of(request)))


@routes.patch("/api/v1/portal/me", tag="portal", body=AccountPatch, responses=AUTH,
              summary="Edit the logged-in account (edit rights needed)")
@guarded("portal")
async def edit_me(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, AccountPatch)
    return ok(await hub.run(hub.portal.edit_me, caller_of(request), data))


@routes.get("/api/v1/portal/usage", tag="portal", query=SeriesQuery, responses=AUTH,
            summary="Usage and quote history of the account's metering points per slot, day or month")
@guarded("portal")
async def usage(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, SeriesQuery)
    return ok(await hub.run(hub.portal.usage, caller_of(request), q))


@routes.get("/api/v1/portal/policies", tag="portal", responses=AUTH, summary="ADR policies of the account")
@guarded("portal")
async def policies(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok({"items": await hub.run(hub.portal.policies, caller_of(request))})


@routes.post("/api/v1/portal/policies", tag="portal", body=PolicyIn, status=201, responses=AUTH,
             summary="Add an ADR policy (portal with edit rights, or a display terminal)")
@guarded("portal")
async def add_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, PolicyIn)
    return ok(await hub.run(hub.portal.add_policy, caller_of(request), data), status=201)


@routes.patch("/api/v1/portal/policies/{policy_id}", tag="portal", body=PolicyPatch, responses=AUTH,
              summary="Edit, deactivate or reactivate a policy (a terminal may only deactivate)")
@guarded("portal")
async def edit_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, PolicyPatch)
    return ok(await hub.run(hub.portal.edit_policy, caller_of(request), path_int(request, "policy_id"), data))


@routes.delete("/api/v1/portal/policies/{policy_id}", tag="portal", status=204, responses=AUTH,
               summary="Delete a policy (logically; the portal only)")
@guarded("portal")
async def delete_policy(request: web.Request) -> web.Response:
    hub = hub_of(request)
    await hub.run(hub.portal.delete_policy, caller_of(request), path_int(request, "policy_id"))
    return web.Response(status=204)


@routes.get("/api/v1/portal/adr-history", tag="portal", query=HistoryQuery, responses=AUTH,
            summary="DR events and the actions taken on the account's metering points")
@guarded("portal")
async def adr_history(request: web.Request) -> web.Response:
    hub = hub_of(request)
    q = parse_query(request, HistoryQuery)
    return ok(await hub.run(hub.portal.adr_history, caller_of(request), q))


@routes.get("/api/v1/portal/terminals", tag="portal", responses=AUTH, summary="Display terminals bound to the account")
@guarded("portal")
async def terminals(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok({"items": await hub.run(hub.portal.terminals, caller_of(request))})


@routes.post("/api/v1/portal/terminals", tag="portal", body=TerminalIn, status=201, responses=AUTH,
             summary="Bind a display terminal (VPA); its key is in this answer only")
@guarded("portal")
async def bind_terminal(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, TerminalIn)
    return ok(await hub.run(hub.portal.bind_terminal, caller_of(request), data), status=201)


@routes.delete("/api/v1/portal/terminals/{terminal_id}", tag="portal", status=204, responses=AUTH,
               summary="Unbind a display terminal (its key stops working)")
@guarded("portal")
async def unbind_terminal(request: web.Request) -> web.Response:
    hub = hub_of(request)
    await hub.run(hub.portal.unbind_terminal, caller_of(request), request.match_info["terminal_id"])
    return web.Response(status=204)
