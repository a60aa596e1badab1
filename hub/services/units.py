"""Which logical device a pushing unit's readings belong to.

A wireless unit names itself by its ID, which is the serial or the MAC of the physical device it
is registered as; its readings feed the installed logical device at a given address on that
physical device. Lookups are cached for a short while (units push every 30 minutes, thousands at
the same moment) and re-read after ``ttl_seconds`` so installations and replacements are seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import or_, select

from hub.db import Database
from hub.model import LogicalDevice, PhysicalDevice
from hub.services.validation import MacAddress

_IN_CHUNK = 500  # values per IN (...) lookup; well under every backend's parameter limit
_MAC = TypeAdapter(MacAddress)


class UnitService:
    """Resolve unit IDs to LD_IDs, with a time-limited cache of hits and misses alike."""

    def __init__(self, db: Database, *, ttl_seconds: float = 300.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def ld_id_of(self, unit_id: str, ld_address: int = 2) -> str | None:
        """The LD_ID fed by ``unit_id``, or None when no installed logical device matches."""
        return self.ld_ids_of([unit_id], ld_address).get(unit_id)

    def ld_ids_of(self, unit_ids: Iterable[str], ld_address: int = 2) -> dict[str, str]:
        """LD_IDs of the given units; units that resolve to nothing are left out."""
        now = self._clock()
        found: dict[str, str] = {}
        wanted: list[str] = []
        with self._lock:
            for unit in dict.fromkeys(unit_ids):
                hit = self._cache.get((unit, ld_address))
                if hit is not None and hit[0] > now:
                    if hit[1] is not None:
                        found[unit] = hit[1]
                else:
                    wanted.append(unit)
        if wanted:
            fresh = self._lookup(wanted, ld_address)
            found.update(fresh)
            with self._lock:
                if len(self._cache) + len(wanted) > self.max_entries:
                    self._cache.clear()
                expires = now + self.ttl_seconds
                for unit in wanted:
                    self._cache[(unit, ld_address)] = (expires, fresh.get(unit))
        return found

    def forget(self, unit_id: str | None = None) -> None:
        """Drop one unit's cached answer (or all), e.g. right after registering or installing it."""
        with self._lock:
            if unit_id is None:
                self._cache.clear()
            else:
                for key in [k for k in self._cache if k[0] == unit_id]:
                    del self._cache[key]

    def _lookup(self, unit_ids: list[str], ld_address: int) -> dict[str, str]:
        macs: dict[str, list[str]] = {}  # normal form -> the unit IDs spelling it
        for unit in unit_ids:
            if (normal := _mac_or_none(unit)) is not None:
                macs.setdefault(normal, []).append(unit)
        found: dict[str, str] = {}
        with self.db.session() as s:
            for start in range(0, len(unit_ids), _IN_CHUNK):
                chunk = set(unit_ids[start:start + _IN_CHUNK])
                chunk_macs = sorted(m for m, units in macs.items() if chunk.intersection(units))
                rows = s.execute(
                    select(PhysicalDevice.serial, PhysicalDevice.mac, LogicalDevice.ld_id)
                    .join(LogicalDevice, LogicalDevice.physical_device_id == PhysicalDevice.id)
                    .where(or_(PhysicalDevice.serial.in_(sorted(chunk)), PhysicalDevice.mac.in_(chunk_macs)),
                           PhysicalDevice.deleted.is_(False), LogicalDevice.deleted.is_(False),
                           LogicalDevice.ld_address == ld_address, LogicalDevice.ld_id.is_not(None))
                ).all()
                for serial, mac, ld_id in rows:
                    if serial in chunk:
                        found[serial] = ld_id
                    for unit in macs.get(mac, ()):
                        if unit in chunk:
                            found.setdefault(unit, ld_id)
        return found


def _mac_or_none(unit_id: str) -> str | None:
    try:
        return _MAC.validate_python(unit_id)
    except ValidationError:
        return None
