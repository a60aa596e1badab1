"""Small helpers shared by the noun modules: reading and writing CIMTool-style profile elements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from adapters.cim.envelope import ID, EnvelopeError, ErrorItem, parse_time
from adapters.cim import codes


def local(el: etree._Element) -> str:
    return etree.QName(el).localname


def kids(el: etree._Element, name: str | None = None) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and (name is None or local(c) == name)]


def kid(el: etree._Element, name: str) -> etree._Element | None:
    found = kids(el, name)
    return found[0] if found else None


def text(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    c = kid(el, name)
    return c.text.strip() if c is not None and c.text and c.text.strip() else None


def names(el: etree._Element) -> list[str]:
    """``Names/name`` values of an identified object."""
    return [t for n in kids(el, "Names") if (t := text(n, "name"))]


def identifiers(el: etree._Element) -> list[str]:
    """Every identifier an object carries: mRID, Names/name, serialNumber (in that order)."""
    out = [v for v in [text(el, "mRID")] if v] + names(el)
    serial = text(el, "serialNumber")
    if serial:
        out.append(serial)
    return out


def ref(el: etree._Element | None, name: str) -> str | None:
    c = kid(el, name) if el is not None else None
    return c.get("ref") if c is not None else None


def window(el: etree._Element | None, where: str) -> tuple[datetime | None, datetime | None]:
    """start/end of a DateTimeInterval element."""
    if el is None:
        return None, None
    s, e = text(el, "start"), text(el, "end")
    return (parse_time(s, f"{where}/start") if s else None, parse_time(e, f"{where}/end") if e else None)


class Builder:
    """Writes elements of one profile namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def root(self, name: str) -> etree._Element:
        return etree.Element(f"{{{self.ns}}}{name}", nsmap={"m": self.ns})

    def sub(self, parent: etree._Element, name: str, value: object | None = None, **attrs: str) -> etree._Element:
        el = etree.SubElement(parent, f"{{{self.ns}}}{name}", attrs)
        if value is not None:
            el.text = value if isinstance(value, str) else time_text(value) if isinstance(value, datetime) \
                else number_text(value) if isinstance(value, float) else str(value)
        return el

    def name(self, parent: etree._Element, value: str, name_type: str | None = None) -> None:
        n = self.sub(parent, "Names")
        self.sub(n, "name", value)
        if name_type:
            nt = self.sub(n, "NameType")
            self.sub(nt, "name", name_type)


def time_text(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def number_text(value: float) -> str:
    """A decimal string without binary noise or exponent (``value`` is xs:string in the profiles)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class Outcome:
    """What a noun handler did: Result follows from the errors (and whether anything succeeded)."""

    errors: list[ErrorItem] = field(default_factory=list)
    ids: list[ID] = field(default_factory=list)
    payload: list[etree._Element] = field(default_factory=list)
    done: int = 0

    def fail(self, key: str, details: str, *, obj: str | None = None, object_type: str | None = None,
             xpath: str | None = None) -> None:
        row = codes.error(key)
        self.errors.append(ErrorItem(code=row.code, level=row.level, reason=row.reason, details=f"hub:{key}: {details}",
                                     xpath=xpath, id=ID(obj, kind="name", object_type=object_type) if obj else None))

    def result(self) -> str:
        if not self.errors:
            return "OK"
        return "PARTIAL" if self.done else "FAILED"


def refuse(key: str, details: str, xpath: str | None = None) -> EnvelopeError:
    return EnvelopeError(key, details, xpath)


def decimal(value: str | None, where: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise EnvelopeError("schema-violation", f"{where}: {value!r} is not a decimal number", where) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise EnvelopeError("schema-violation", f"{where}: {value!r} is not a finite number", where)
    return number


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
