"""The benchmark fleet: which meters the registration file lists and where they end up.

Like a utility migrating its installed base, the first three quarters of the file leave the
concentrator empty, so the assignment strategy (fill-lowest) places those meters on the head-ends'
holding concentrators HE1, HE2, HE3 (20,000 each at 80,000 meters); the last quarter names real
concentrators of head-end 4, registered beforehand through the concentrator service, 400 meters
each. Searches by CO_ID can then ask for both a holding concentrator and an ordinary one.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stores import HE_CAPACITY, HEAD_ENDS

CONCENTRATOR_SIZE = 400  # meters under one installed concentrator
INSTALLED_HEAD_END = HEAD_ENDS
CLUSTERS = ("demo-tower-a", "demo-tower-b", "demo-district-1")
PAGE = 50  # a CO_ID search asks for one page of this many


@dataclass(frozen=True)
class Fleet:
    devices: int

    @property
    def first_installed(self) -> int:
        """Row number of the first meter registered under a real concentrator."""
        return self.devices * 3 // 4 + 1

    def co_id(self, n: int) -> str | None:
        if n < self.first_installed:
            return None
        return concentrator_id((n - self.first_installed) // CONCENTRATOR_SIZE + 1)

    @property
    def concentrators(self) -> list[str]:
        installed = self.devices - self.first_installed + 1
        return [concentrator_id(k) for k in range(1, -(-installed // CONCENTRATOR_SIZE) + 1)]

    @property
    def full_concentrators(self) -> list[str]:
        """Real concentrators holding ``CONCENTRATOR_SIZE`` meters."""
        installed = self.devices - self.first_installed + 1
        return self.concentrators[:installed // CONCENTRATOR_SIZE]

    @property
    def holding_concentrators(self) -> dict[str, int]:
        """CO_ID -> meters of the holding concentrators that end up with at least a page of them."""
        out = {}
        unplaced = self.first_installed - 1
        for he_id in range(1, HEAD_ENDS + 1):
            placed = min(unplaced, HE_CAPACITY)
            if placed >= PAGE:
                out[f"HE{he_id}"] = placed
            unplaced -= placed
        return out


def concentrator_id(k: int) -> str:
    return f"CO{INSTALLED_HEAD_END}-{k:07d}"


def registration_rows(fleet: Fleet, seed: int = 61968) -> Iterator[dict[str, Any]]:
    """The registration records of single-phase meters as asset management lists them: PD_ID,
    serial, MAC, comms address, certificate, LD_ID, cluster and contract amperes set.

    ``config_state`` and ``relay_state`` are left blank (defaults 0 and 1): the importer refuses the
    text "0"/"1" a CSV cell carries for those two fields."""
    from hub.services.registry import CSV_COLUMNS

    rng = random.Random(seed)
    for n in range(1, fleet.devices + 1):
        row = {
            "type_id": 11, "ld_type_id": 101, "pd_id": f"PD{n:013d}", "co_id": fleet.co_id(n) or "", "he_id": "",
            "serial": f"SN-2024-{n:09d}", "mac": f"0250C2{n:06X}", "name": f"comms unit {n}",
            "config_state": "", "ip": f"fd00::{n >> 16:x}:{n & 0xFFFF:x}", "port": 4059,
            "cert_serial": f"CERT{n:012d}", "password": f"{rng.getrandbits(64):016x}",
            "ld_id": ld_id(n), "cluster_id": CLUSTERS[n % len(CLUSTERS)], "ld_name": f"metering point {n}",
            "ld_address": 2, "contract_amps": rng.choice((20, 30, 40, 50, 60)), "relay_state": "",
        }
        assert tuple(row) == CSV_COLUMNS, "the generator must follow DeviceRegistration's fields"
        yield row


def ld_id(n: int) -> str:
    return f"LD{n:010d}"


def write_csv(path: Path, fleet: Fleet) -> Path:
    """The registration CSV of the fleet (header: DeviceRegistration's fields)."""
    from hub.services.registry import CSV_COLUMNS

    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(registration_rows(fleet))
    return path


def register_concentrators(url: str, fleet: Fleet) -> None:
    """The fleet's real concentrators, through the concentrator service, on head-end 4."""
    from hub.config import Settings
    from hub.runtime import Hub
    from hub.services.concentrators import ConcentratorRegistration

    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        for k, co_id in enumerate(fleet.concentrators, start=1):
            hub.concentrators.register(ConcentratorRegistration(
                type_id=2, co_id=co_id, he_id=INSTALLED_HEAD_END, serial=f"CO-SN-{k:07d}", mac=f"0250C3{k:06X}",
                name=f"concentrator {k}", ip=f"fd00:c0::{k:x}", port=4059))
    finally:
        hub.close()
