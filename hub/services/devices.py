"""Read views of devices: what the API shows of a physical or logical device (no secrets)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import UTCDateTime
from hub.model import Concentrator, LogicalDevice, PhysicalDevice, PhysicalDeviceComms
from hub.services.errors import NotFound

SECRET_COMMS_FIELDS = {"password", "common_key", "session_key"}


def comms_view(comms: Any) -> dict[str, Any]:
    """Comms settings without secrets; says whether each secret is set."""
    view = comms.model_dump(mode="json", exclude=SECRET_COMMS_FIELDS | {"physical_device_id", "concentrator_id"})
    for secret in sorted(SECRET_COMMS_FIELDS):
        view[f"{secret}_set"] = getattr(comms, secret) is not None
    return view


def logical_device_view(ld: LogicalDevice, pd: PhysicalDevice | None = None,
                        co: Concentrator | None = None) -> dict[str, Any]:
    view = ld.model_dump(mode="json")
    view["installed"] = ld.ld_id is not None and not ld.deleted
    if pd is not None:
        view["pd_id"] = pd.pd_id
    if co is not None:
        view["co_id"] = co.co_id
        view["he_id"] = co.he_id
    return view


def logical_device_row_views(keys: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """:func:`logical_device_view` of plain rows holding the logical device's columns under
    ``keys``, for lists read without building ORM objects (several times faster for a page).
    Other columns (``pd_id``, ``co_id``, ``he_id``) pass through."""
    stamps = [key for key in keys if key in _LD_TIMESTAMPS]
    views = []
    for row in rows:
        view = dict(zip(keys, row, strict=True))
        for key in stamps:
            if view[key] is not None:
                view[key] = _utc_text(view[key])
        view["installed"] = view["ld_id"] is not None and not view["deleted"]
        views.append(view)
    return views


_LD_TIMESTAMPS = frozenset(c.name for c in LogicalDevice.__table__.columns if isinstance(c.type, UTCDateTime))


def _utc_text(value: datetime) -> str:
    """A stored timestamp (aware UTC) as pydantic writes it in JSON: ISO 8601 ending in Z."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def physical_device_view(s: Session, key: int) -> dict[str, Any]:
    pd = s.get(PhysicalDevice, key)
    if pd is None:
        raise NotFound.on("id", f"physical device {key} does not exist")
    co = s.get(Concentrator, pd.concentrator_id)
    comms = s.get(PhysicalDeviceComms, key)
    lds = s.scalars(select(LogicalDevice).where(LogicalDevice.physical_device_id == key)
                    .order_by(LogicalDevice.ld_address)).all()
    return physical_device_dict(pd, co, comms, lds)


def physical_device_dict(pd: PhysicalDevice, co: Concentrator | None, comms: PhysicalDeviceComms | None,
                         lds: Sequence[LogicalDevice]) -> dict[str, Any]:
    """The view of a physical device from rows already loaded (so lists can fetch them in bulk).

    ``installed`` mirrors the logical device's rule: the PD_ID is set and the device is not disposed.
    """
    view = pd.model_dump(mode="json")
    view["installed"] = pd.pd_id is not None and not pd.deleted
    view["co_id"] = co.co_id if co else None
    view["he_id"] = co.he_id if co else None
    view["comms"] = comms_view(comms) if comms else None
    view["logical_devices"] = [logical_device_view(ld) for ld in lds]
    return view
