"""Parsing XML from partners without trusting it.

lxml is set up so that nothing outside the document is ever read and nothing inside expands:
no DTD loading, no entity resolution, no network, no huge-tree mode (lxml's own depth and text
limits stay on). A document that declares a DOCTYPE at all is refused: none of the hub's XML
edges (61968-100, IEEE 1888, the public SOAP API) needs one, and refusing it closes billion-laughs
and XXE in one rule. Each edge caps the size before the body is read whole, and maps the two
errors below to its own protocol's error.
"""

from __future__ import annotations

from lxml import etree


class UnsafeXml(ValueError):
    """The document declares a DTD or entities."""


class MalformedXml(ValueError):
    """The document is not well-formed XML."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True, remove_pis=True)


def parse(data: bytes) -> etree._Element:
    """The root element of ``data``; raises :class:`UnsafeXml` or :class:`MalformedXml`."""
    head = data[:4096].lstrip()
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in data.upper():
        raise UnsafeXml("document type declarations and entities are not accepted")
    try:
        tree = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    info = tree.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        raise UnsafeXml("document type declarations and entities are not accepted")
    if any(isinstance(node, etree._Entity) for node in tree.iter()):
        raise UnsafeXml("entity references are not accepted")
    return tree
