"""Value rules shared by every flow: ID lengths, MAC format, and the pydantic types that carry them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from hub.model.base import BUSINESS_KEY_MAX, ID_MAX

_MAC_RE = re.compile(r"^[0-9A-F]{12}$")


def _device_id(value: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise ValueError("must be printable ASCII")
    if len(value) > ID_MAX:
        raise ValueError(f"must be at most {ID_MAX} characters (got {len(value)})")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _business_key(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if len(value) > BUSINESS_KEY_MAX:
        raise ValueError(f"must be at most {BUSINESS_KEY_MAX} characters (got {len(value)})")
    if any(ch in value for ch in "\x00\r\n\t"):
        raise ValueError("must not contain control characters")
    return value


def _mac(value: str) -> str:
    normal = value.replace(":", "").replace("-", "").upper()
    if not _MAC_RE.match(normal):
        raise ValueError("must be 12 hexadecimal digits (separators : or - allowed)")
    return normal


def _blank_to_none(value: object) -> object:
    return None if isinstance(value, str) and value.strip() == "" else value


DeviceId = Annotated[str, AfterValidator(_device_id)]
"""PD_ID or CO_ID: 15-character printable ASCII."""
BusinessKey = Annotated[str, AfterValidator(_business_key)]
"""LD_ID, customer and cluster IDs."""
MacAddress = Annotated[str, AfterValidator(_mac)]
"""A MAC address, stored as 12 upper-case hex digits."""
Blank = BeforeValidator(_blank_to_none)
"""Treat an empty CSV cell as absent."""
