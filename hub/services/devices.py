"""Read views of devices: what the API shows of a physical or logical device (no secrets)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def physical_device_view(s: Session, key: int) -> dict[str, Any]:
    pd = s.get(PhysicalDevice, key)
    if pd is None:
        raise NotFound.on("id", f"physical device {key} does not exist")
    co = s.get(Concentrator, pd.concentrator_id)
    comms = s.get(PhysicalDeviceComms, key)
    lds = s.scalars(select(LogicalDevice).where(LogicalDevice.physical_device_id == key)
                    .order_by(LogicalDevice.ld_address)).all()
    view = pd.model_dump(mode="json")
    view["co_id"] = co.co_id if co else None
    view["he_id"] = co.he_id if co else None
    view["comms"] = comms_view(comms) if comms else None
    view["logical_devices"] = [logical_device_view(ld) for ld in lds]
    return view
