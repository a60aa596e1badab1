"""Validating 61968-100 envelopes and 61968-9 payloads against the XSDs in ``schemas/cim``.

Incoming documents come in several namespaces (the ``www.`` draft, Ed.2, SOAP verb+noun wrappers,
2009 payloads). Where the structure is the same they are validated against the Ed.1 schema after
their namespace is mapped onto it, on a copy, so what is validated is exactly what was received.
"""

from __future__ import annotations

import copy
import functools
import re

from lxml import etree

import schemas
from adapters.cim.envelope import ACCEPTED_NS, MSG_NS, EnvelopeError, profile_of

PROFILES = ("MeterReadings", "GetMeterReadings", "EndDeviceEvents", "GetEndDeviceEvents", "EndDeviceControls",
            "MeterConfig", "UsagePointConfig")
PAYLOAD_YEARS = ("2009", "2011")
_WRAPPER_NS = re.compile(r"^https?://(www\.)?iec\.ch/TC57/\d{4}/[A-Za-z]+Message$")


@functools.cache
def schema(name: str) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.parse(str(schemas.path(f"cim/{name}.xsd")), parser))


def profile_namespace(profile: str) -> str:
    return f"http://iec.ch/TC57/2011/{profile}#"


def _first_error(s: etree.XMLSchema) -> str:
    err = s.error_log.last_error
    return f"line {err.line}: {err.message}" if err is not None else "invalid"


def validate_envelope(root: etree._Element, kind: str) -> None:
    """Validate the envelope of ``root`` (any accepted wrapping) against Message.xsd."""
    doc = copy.deepcopy(root)
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        q = etree.QName(el)
        if q.namespace in ACCEPTED_NS or (q.namespace and _WRAPPER_NS.match(q.namespace)):
            el.tag = f"{{{MSG_NS}}}{q.localname}"
    doc.tag = f"{{{MSG_NS}}}{kind}"
    etree.cleanup_namespaces(doc)
    s = schema("Message")
    if not s.validate(doc):
        raise EnvelopeError("schema-violation", f"envelope: {_first_error(s)}", _xpath(s))


def validate_payload(el: etree._Element, expected: str) -> etree._Element:
    """Validate a profile element (``expected`` is its profile, e.g. MeterReadings); returns it in the
    2011 namespace (2009 documents of the same structure are mapped)."""
    found = profile_of(el)
    if found is None or found[0] != expected or etree.QName(el).localname != expected:
        raise EnvelopeError("schema-violation", f"expected {{{profile_namespace(expected)}}}{expected}, "
                            f"found {el.tag}", "Payload")
    if found[1] not in PAYLOAD_YEARS:
        raise EnvelopeError("unsupported-version", f"profile namespace {etree.QName(el).namespace} is not "
                            f"supported; use {profile_namespace(expected)}", "Payload")
    if found[1] != "2011" or etree.QName(el).namespace != profile_namespace(expected):
        el = copy.deepcopy(el)
        old, new = etree.QName(el).namespace, profile_namespace(expected)
        for e in el.iter():
            if isinstance(e.tag, str) and etree.QName(e).namespace == old:
                e.tag = f"{{{new}}}{etree.QName(e).localname}"
    s = schema(expected)
    if not s.validate(el):
        raise EnvelopeError("schema-violation", f"{expected}: {_first_error(s)}", _xpath(s))
    return el


def is_valid(el: etree._Element, name: str) -> bool:
    return bool(schema(name).validate(el))


def _xpath(s: etree.XMLSchema) -> str | None:
    err = s.error_log.last_error
    return err.path if err is not None else None
