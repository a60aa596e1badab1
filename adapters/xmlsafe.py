"""Parsing XML from partners without trusting it.

lxml is set up so that nothing outside the document is ever read and nothing inside expands:
no DTD loading, no entity resolution, no network, no huge-tree mode (lxml's own depth and text
limits stay on). A document that declares a DOCTYPE at all is refused: none of the hub's XML
edges (61968-100, IEEE 1888, the public SOAP API) needs one, and refusing it closes billion-laughs
and XXE in one rule. Each edge caps the size before the body is read whole, and maps the two
errors below to its own protocol's error.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from lxml import etree


class UnsafeXml(ValueError):
    """The document declares a DTD or entities."""


class MalformedXml(ValueError):
    """The document is not well-formed XML."""


OPTIONS = {"resolve_entities": False, "no_network": True, "load_dtd": False, "dtd_validation": False,
           "huge_tree": False, "remove_comments": True, "remove_pis": True}
"""The one set of parser settings, for whole-document and streaming parses alike."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**OPTIONS)


def _refuse_declarations(data: bytes) -> None:
    head = data[:4096].lstrip()
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in data.upper():
        raise UnsafeXml("document type declarations and entities are not accepted")


def iterparse(data: bytes, events: tuple[str, ...] = ("start", "end"), tag: list[str] | None = None,
              schema: etree.XMLSchema | None = None) -> Iterator[tuple[str, etree._Element]]:
    """(event, element) pairs of ``data`` parsed incrementally under the same rules as :func:`parse`,
    so a caller can consume and drop elements of a large document as they complete (with no DTD,
    an entity reference can only be malformed). ``tag`` limits the events to those elements
    (lxml's filter, ``{*}name`` for any namespace); the whole document is still parsed and checked.
    The last pair is ``("document", root)``. With ``schema`` the document is validated as it is
    parsed (libxml2's streaming validation): a violation raises :class:`MalformedXml` too. Raises
    :class:`UnsafeXml` or :class:`MalformedXml` (possibly after some events)."""
    _refuse_declarations(data)
    checked = False
    extra = {"schema": schema} if schema is not None else {}
    parser = etree.iterparse(io.BytesIO(data), events=events, tag=tag, **OPTIONS, **extra)
    try:
        for event, el in parser:
            if not checked:
                _refuse_doctype(el)
                checked = True
            yield event, el
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    _refuse_doctype(parser.root)
    yield "document", parser.root


def _refuse_doctype(el: etree._Element) -> None:
    info = el.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        raise UnsafeXml("document type declarations and entities are not accepted")


def parse(data: bytes) -> etree._Element:
    """The root element of ``data``; raises :class:`UnsafeXml` or :class:`MalformedXml`."""
    _refuse_declarations(data)
    try:
        tree = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    _refuse_doctype(tree)
    refuse_entities(tree)
    return tree


def refuse_entities(root: etree._Element) -> None:
    """Refuse a tree holding entity reference nodes (left unresolved by the parser settings)."""
    if next(root.iter(etree.Entity), None) is not None:  # lxml filters by node type in C: no Python walk
        raise UnsafeXml("entity references are not accepted")
