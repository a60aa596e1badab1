"""Demo data: a catalogue, two head-ends and a few hundred installed meters, created through the
same services the API uses. Seeding is skipped when the demo head-ends already exist."""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy import select

from hub.model import PhysicalDevice
from hub.runtime import Hub
from hub.services.admin import DeviceTypeIn, HeadEndIn, ParameterGroupIn, ParameterItemIn
from hub.services.errors import NotFound
from hub.services.provisioning import ProvisioningUpdate

METER_GROUP = ParameterGroupIn(group_id=1, name="single-phase meter registers", items=[
    ParameterItemIn(sub_number=1, obis="1.0.1.8.0.255", name="import active energy", unit="kWh",
                    kind="cumulative", min_value=0, max_value=1e9),
    ParameterItemIn(sub_number=2, obis="1.0.11.6.0.255", name="maximum current", unit="A",
                    kind="maximum", min_value=0, max_value=200),
])
CLUSTERS = ("demo-tower-a", "demo-tower-b", "demo-district-1")


def demo_rows(count: int, seed: int, head_ends: int = 2) -> list[dict[str, Any]]:
    """Registration records of ``count`` installed demo meters (reproducible for a seed), spread
    evenly over the head-ends."""
    rng = random.Random(seed)
    rows = []
    per_head_end = math.ceil(count / head_ends)
    for n in range(1, count + 1):
        rows.append({
            "type_id": 11, "ld_type_id": 101, "config_state": 1, "he_id": (n - 1) // per_head_end + 1,
            "pd_id": f"DEMO-PD-{n:06d}", "serial": f"DEMO-SN-{seed}-{n:06d}",
            "mac": f"02DE{seed % 256:02X}{n:06X}", "name": f"demo meter {n}",
            "ld_id": f"DEMO-LD-{n:06d}", "ld_name": f"metering point {n}",
            "cluster_id": CLUSTERS[n % len(CLUSTERS)],
            "contract_amps": rng.choice((20, 30, 40, 60)),
        })
    return rows


def seed_catalogue(hub: Hub, *, head_ends: int = 2, capacity: int = 20_000,
                   simulator: dict[str, Any] | None = None) -> None:
    """The demo catalogue: parameter group 1 (energy, max current), PD type 11, LD type 101,
    concentrator type 2, head-ends 1..``head_ends`` with ``capacity`` each (simulated, with the
    ``simulator`` settings), and three clusters."""
    from hub.model import Cluster

    hub.admin.create_parameter_group(METER_GROUP)
    hub.admin.create_type("physical-device", DeviceTypeIn(type_id=11, name="smart meter comms unit"))
    hub.admin.create_type("logical-device", DeviceTypeIn(type_id=101, name="single-phase meter", group_id=1))
    hub.admin.create_type("concentrator", DeviceTypeIn(type_id=2, name="concentrator"))
    for he_id in range(1, head_ends + 1):
        hub.admin.create_head_end(HeadEndIn(he_id=he_id, name=f"head-end {he_id}", adapter="simulator",
                                            capacity=capacity, settings={"seed": he_id, **(simulator or {})}))
    with hub.db.session() as s:
        for cluster_id in CLUSTERS:
            s.add(Cluster(cluster_id=cluster_id, name=cluster_id.replace("-", " "), area="demo"))


def seed_demo(hub: Hub) -> str:
    """Register the demo meters (with their installation data, as a kitting file would carry it)
    and report them provisioned and keyed, so they are poll targets like meters in the field."""
    settings = hub.settings.demo
    try:
        hub.admin.get_head_end(1)
        return "already seeded"
    except NotFound:
        pass
    seed_catalogue(hub, head_ends=settings.head_ends, simulator={"failure_rate": settings.failure_rate})
    report = hub.registry.import_json(demo_rows(settings.meters, settings.seed, settings.head_ends), atomic=True)
    if report.failed:
        raise RuntimeError(f"demo seeding failed: {report.as_dict()['errors'][:3]}")
    with hub.db.session() as s:
        keys = list(s.scalars(select(PhysicalDevice.id).order_by(PhysicalDevice.id)))
    for n, key in enumerate(keys, start=1):
        hub.provisioning.update("physical-device", key, ProvisioningUpdate(
            dhcp_done=True, provisioned=True, ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", port=4059,
            common_key=f"demo-key-{n:06d}"))
    policies = seed_adr_policies(hub, [row["ld_id"] for row in demo_rows(settings.meters, settings.seed,
                                                                           settings.head_ends)])
    spread = ", ".join(f"HE{he}: {n}" for he, n in sorted(report.assigned.items()))
    return (f"{report.stored} meters on {settings.head_ends} head-ends ({spread}), provisioned and active; "
            f"{policies} with an active ADR policy")


ADR_SHARE = 5
"""Every fifth demo meter answers DR events: the seed's participation estimate of 20 %."""


def seed_adr_policies(hub: Hub, ld_ids: list[str]) -> int:
    """Active ADR policies for a share of the demo meters, so an event sent to the demo's VEN (as a
    whole: every LD with an active policy) reserves capacity changes at once: SIMPLE levels 1-3 cut
    the contract to 15 A, any day and hour, no notice needed."""
    from hub.services.adr_policies import PolicyIn

    rows = [PolicyIn(ld_id=ld_id, signal_levels=[1, 2, 3], reduced_amps=15)
            for n, ld_id in enumerate(ld_ids) if n % ADR_SHARE == 0]
    return hub.adr.policies.create_many(rows)


IEEE1888_SITE_FILE = "ieee1888_points.toml"


def seed_ieee1888_site(hub: Hub) -> str:
    """Register the demo site's IEEE 1888 points (PV, an EV charger, environment sensors) from
    mappings/ieee1888_points.toml; the demo gateway (adapters.ieee1888.demo_gateway) feeds them."""
    from pathlib import Path

    report = hub.fiap.points.load_mapping(Path(__file__).resolve().parents[1] / "mappings" / IEEE1888_SITE_FILE)
    return f"{report['registered'] + report['updated']} IEEE 1888 points on the demo site"
