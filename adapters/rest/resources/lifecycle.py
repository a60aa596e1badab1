"""A device's life after registration: installation and its clearing (with contract cancellation),
logical devices added to live units, disposal, provisioning progress and collection reservations."""

from __future__ import annotations

from aiohttp import web

from adapters.rest.common import hub_of, ok, parse_body, parse_query, path_int
from adapters.rest.routing import ApiRoutes
from hub.services.installation import ClearOptions, Installation, LogicalDeviceAddition
from hub.services.provisioning import CollectionReservation, DeviceKind, ProvisioningUpdate

routes = ApiRoutes()
DEVICE_PATHS: dict[DeviceKind, str] = {
    "physical-device": "/api/v1/physical-devices/{id}",
    "concentrator": "/api/v1/concentrators/{id}",
}


@routes.post("/api/v1/physical-devices/{id}/installation", tag="installation", body=Installation,
             summary="Register the installation: PD_ID, names, concentrator, LD_IDs, clusters, contract amps",
             responses={409: "disposed, or an ID already used by another device", 422: "unknown reference"})
async def install(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, Installation)
    return ok(await hub.run(hub.installation.install, path_int(request, "id"), data))


@routes.delete("/api/v1/physical-devices/{id}/installation", tag="installation", query=ClearOptions,
               summary="Clear the installation of a physical device (cancel=true also ends the contract)",
               responses={409: "not installed, or disposed"})
async def clear_installation(request: web.Request) -> web.Response:
    hub = hub_of(request)
    options = parse_query(request, ClearOptions)
    return ok(await hub.run(hub.installation.clear, path_int(request, "id"), cancel=options.cancel))


@routes.delete("/api/v1/logical-devices/{ld_id}/installation", tag="installation", query=ClearOptions,
               summary="Clear the installation of one metering point (cancel=true also ends its contract)")
async def clear_logical_installation(request: web.Request) -> web.Response:
    hub = hub_of(request)
    options = parse_query(request, ClearOptions)
    return ok(await hub.run(hub.installation.clear_logical, request.match_info["ld_id"], cancel=options.cancel))


@routes.post("/api/v1/physical-devices/{id}/logical-devices", tag="installation", body=LogicalDeviceAddition,
             status=201, summary="Add a logical device (service, channel) to a live physical device",
             responses={409: "address or LD_ID taken, or the unit is disposed", 422: "unknown type or cluster"})
async def add_logical_device(request: web.Request) -> web.Response:
    hub = hub_of(request)
    data = await parse_body(request, LogicalDeviceAddition)
    return ok(await hub.run(hub.installation.add_logical_device, path_int(request, "id"), data), 201)


@routes.post("/api/v1/physical-devices/{id}/disposal", tag="installation",
             summary="Dispose of an uninstalled physical device (the certificate is revoked separately)",
             responses={409: "still installed, or already disposed"})
async def dispose(request: web.Request) -> web.Response:
    hub = hub_of(request)
    return ok(await hub.run(hub.installation.dispose, path_int(request, "id")))


def _comms_routes(kind: DeviceKind, base: str) -> None:
    async def reserve(request: web.Request) -> web.Response:
        hub = hub_of(request)
        data = await parse_body(request, CollectionReservation)
        return ok(await hub.run(hub.provisioning.reserve_collection, kind, path_int(request, "id"), data))

    async def provision(request: web.Request) -> web.Response:
        hub = hub_of(request)
        data = await parse_body(request, ProvisioningUpdate)
        return ok(await hub.run(hub.provisioning.update, kind, path_int(request, "id"), data))

    routes.put(f"{base}/collection-reservation", tag="provisioning", body=CollectionReservation,
               summary=f"Reserve the times {kind} collection stops and (re)starts (null clears)",
               responses={409: "disposed, or a holding concentrator"})(reserve)
    routes.patch(f"{base}/provisioning", tag="provisioning", body=ProvisioningUpdate,
                 summary=f"Record {kind} provisioning progress: DHCP, provisioning, keys (use state N -> C -> A)",
                 responses={409: "a done step would be undone, or disposed"})(provision)


for _kind, _base in DEVICE_PATHS.items():
    _comms_routes(_kind, _base)
