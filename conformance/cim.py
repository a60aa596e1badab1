"""Conformance suite for IEC 61968-9 endpoints over 61968-100 (``mdmhub conformance cim --target URL``).

``URL`` is the endpoint's base (e.g. ``http://127.0.0.1:8080``): messages go to ``URL/cim/messages``,
the WSDL is read from ``URL/cim/soap?wsdl``. Each case sends one kind of message and checks the
reply: envelope namespace and structure against the 61968-100 XSD, CorrelationID echoing the
request's MessageID, Result and Error/code present, standard refusals of malformed, hostile and
schema-invalid messages, unknown verbs and nouns, replay of a MessageID, compressed and large
payloads. Results go to ``cim-conformance.xml`` (JUnit) and ``cim-conformance.txt`` in
``$MDMHUB_CONFORMANCE_DIR`` (default: the current folder); the exit code is 0 when all passed.
"""

from __future__ import annotations

import base64
import gzip
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import requests
from lxml import etree

import schemas

MSG = "http://iec.ch/TC57/2011/schema/message"
MR = "http://iec.ch/TC57/2011/MeterReadings#"
GMR = "http://iec.ch/TC57/2011/GetMeterReadings#"
NS = {"msg": MSG}
TIMEOUT = 60


class CaseFailure(AssertionError):
    """A check of a case did not hold; the message says what was expected."""


@dataclass
class CaseResult:
    name: str
    passed: bool
    seconds: float
    reason: str = ""


def _check(cond: bool, reason: str) -> None:
    if not cond:
        raise CaseFailure(reason)


def _message(verb: str, noun: str, body: str = "", kind: str = "RequestMessage", message_id: str | None = None) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><{kind} xmlns="{MSG}"><Header><Verb>{verb}</Verb><Noun>{noun}</Noun>'
            f"<Timestamp>2026-01-01T00:00:00Z</Timestamp><Source>conformance</Source>"
            f"<MessageID>{message_id or uuid.uuid4()}</MessageID></Header>{body}</{kind}>").encode()


def _get_unknown(message_id: str) -> bytes:
    return _message("get", "MeterReadings", f'<Request><StartTime>2026-01-01T00:00:00Z</StartTime><EndTime>'
                    f'2026-01-01T01:00:00Z</EndTime><g:GetMeterReadings xmlns:g="{GMR}"><g:UsagePoint><g:mRID>'
                    f"CONFORMANCE-NO-SUCH-POINT</g:mRID></g:UsagePoint></g:GetMeterReadings></Request>",
                    message_id=message_id)


class Suite:
    def __init__(self, target: str) -> None:
        self.base = target.rstrip("/")
        self.envelope = etree.XMLSchema(etree.parse(str(schemas.path("cim/Message.xsd"))))

    def post(self, body: bytes) -> tuple[int, bytes]:
        r = requests.post(f"{self.base}/cim/messages", data=body, timeout=TIMEOUT,
                          headers={"Content-Type": "application/xml"})
        return r.status_code, r.content

    def reply(self, body: bytes, request_id: str | None = None) -> etree._Element:
        """POST ``body``; the reply must be a schema-valid ResponseMessage with a Result and, when
        ``request_id`` is given, that CorrelationID."""
        status, content = self.post(body)
        _check(status < 500, f"HTTP {status}: a reply must never be a server error")
        try:
            root = etree.fromstring(content, etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError as exc:
            raise CaseFailure(f"the reply is not XML: {exc}; first bytes {content[:120]!r}") from None
        _check(etree.QName(root) == etree.QName(MSG, "ResponseMessage"),
               f"the reply is {root.tag}, not {{{MSG}}}ResponseMessage")
        _check(bool(self.envelope.validate(root)), f"the reply does not validate: {self.envelope.error_log.last_error}")
        _check(root.findtext("msg:Header/msg:Verb", namespaces=NS) == "reply", "Header/Verb of a reply must be reply")
        _check(b"schemaLocation" not in content, "replies must not carry xsi:schemaLocation")
        if request_id is not None:
            got = root.findtext("msg:Header/msg:CorrelationID", namespaces=NS)
            _check(got == request_id, f"CorrelationID is {got!r}, expected the request's MessageID {request_id!r}")
        return root

    @staticmethod
    def failed_with_code(root: etree._Element, what: str) -> None:
        result = root.findtext("msg:Reply/msg:Result", namespaces=NS)
        _check(result == "FAILED", f"{what}: Result is {result!r}, expected FAILED")
        codes = [c.text for c in root.findall("msg:Reply/msg:Error/msg:code", NS)]
        _check(bool(codes) and all(codes), f"{what}: a FAILED reply must carry Error/code")

    # cases ---------------------------------------------------------------------------------------

    def case_envelope_and_correlation(self) -> None:
        mid = str(uuid.uuid4())
        root = self.reply(_get_unknown(mid), mid)
        self.failed_with_code(root, "get MeterReadings for an unknown UsagePoint")

    def case_unknown_noun(self) -> None:
        mid = str(uuid.uuid4())
        self.failed_with_code(self.reply(_message("get", "NoSuchNoun", message_id=mid), mid), "unknown Noun")

    def case_unknown_verb(self) -> None:
        self.failed_with_code(self.reply(_message("launch", "MeterReadings")), "unknown Verb")

    def case_wrong_case_verb(self) -> None:
        self.failed_with_code(self.reply(_message("Get", "MeterReadings")), "wrong-case Verb")

    def case_missing_header(self) -> None:
        self.failed_with_code(self.reply(f'<RequestMessage xmlns="{MSG}"><Request/></RequestMessage>'.encode()),
                              "message without Header")

    def case_header_order(self) -> None:
        body = f'<RequestMessage xmlns="{MSG}"><Header><Noun>MeterReadings</Noun><Verb>get</Verb></Header></RequestMessage>'
        self.failed_with_code(self.reply(body.encode()), "Header elements out of order")

    def case_malformed_xml(self) -> None:
        self.failed_with_code(self.reply(f'<RequestMessage xmlns="{MSG}"><Header>'.encode()), "malformed XML")

    def case_xxe_not_resolved(self) -> None:
        body = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
                + _message("get", "MeterReadings").split(b"?>", 1)[1].replace(b"<Source>conformance", b"<Source>&x;"))
        status, content = self.post(body)
        hostname = Path("/etc/hostname").read_bytes().strip() if Path("/etc/hostname").exists() else b"\x00"
        _check(hostname not in content, "the reply contains the content of an external entity")
        self.failed_with_code(self.reply(body), "document with an external entity")

    def case_replay_returns_first_reply(self) -> None:
        mid = str(uuid.uuid4())
        body = _message("create", "MeterReadings", f'<Payload><m:MeterReadings xmlns:m="{MR}"><m:MeterReading>'
                        f"<m:UsagePoint><m:mRID>CONFORMANCE-NO-SUCH-POINT</m:mRID></m:UsagePoint></m:MeterReading>"
                        f"</m:MeterReadings></Payload>", message_id=mid)
        first, again = self.reply(body, mid), self.reply(body, mid)
        a = first.findtext("msg:Header/msg:MessageID", namespaces=NS)
        b = again.findtext("msg:Header/msg:MessageID", namespaces=NS)
        _check(a == b, f"a replayed MessageID got a new reply ({a} then {b}); the first reply must be returned")

    def case_compressed_payload(self) -> None:
        inner = f'<m:MeterReadings xmlns:m="{MR}"/>'
        packed = base64.b64encode(gzip.compress(inner.encode())).decode()
        mid = str(uuid.uuid4())
        root = self.reply(_message("created", "MeterReadings", f"<Payload><Compressed>{packed}</Compressed>"
                                   "<Format>XML</Format></Payload>", "EventMessage", mid), mid)
        result = root.findtext("msg:Reply/msg:Result", namespaces=NS)
        _check(result in ("OK", "PARTIAL", "FAILED"), f"Result {result!r}")
        codes = [c.text for c in root.findall("msg:Reply/msg:Error/msg:code", NS)]
        _check("1.4" not in codes and "1.0" not in codes, f"a valid compressed payload was refused: {codes}")

    def case_large_payload(self) -> None:
        reading = ('<m:Readings><m:timeStamp>2026-01-01T00:00:00Z</m:timeStamp><m:value>1</m:value>'
                   '<m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/></m:Readings>')
        mr = f"<m:MeterReading>{reading * 100}<m:UsagePoint><m:mRID>CONFORMANCE-NO-SUCH-POINT</m:mRID></m:UsagePoint></m:MeterReading>"
        body = _message("created", "MeterReadings", f'<Payload><m:MeterReadings xmlns:m="{MR}">{mr * 100}'
                        "</m:MeterReadings></Payload>", "EventMessage")
        started = time.perf_counter()
        self.reply(body)
        _check(time.perf_counter() - started < 30, "a 2 MB message took over 30 s")

    def case_wsdl_served(self) -> None:
        r = requests.get(f"{self.base}/cim/soap?wsdl", timeout=TIMEOUT)
        _check(r.status_code == 200, f"GET /cim/soap?wsdl answered HTTP {r.status_code}")
        root = etree.fromstring(r.content, etree.XMLParser(resolve_entities=False, no_network=True))
        ops = {op.get("name") for op in root.iter("{http://schemas.xmlsoap.org/wsdl/}operation")}
        _check("GetMeterReadings" in ops, f"the WSDL has no GetMeterReadings operation ({sorted(ops)[:5]})")

    def cases(self) -> list[tuple[str, Callable[[], None]]]:
        return [(name[5:], getattr(self, name)) for name in dir(self) if name.startswith("case_")]

    def run(self) -> list[CaseResult]:
        results = []
        for name, case in self.cases():
            started = time.perf_counter()
            try:
                case()
                results.append(CaseResult(name, True, time.perf_counter() - started))
            except CaseFailure as exc:
                results.append(CaseResult(name, False, time.perf_counter() - started, str(exc)))
            except requests.RequestException as exc:
                results.append(CaseResult(name, False, time.perf_counter() - started, f"transport: {exc}"))
        return results


def junit(results: list[CaseResult]) -> str:
    failures = sum(not r.passed for r in results)
    lines = [f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="cim" tests="{len(results)}" '
             f'failures="{failures}" time="{sum(r.seconds for r in results):.3f}">']
    for r in results:
        lines.append(f'  <testcase classname="cim" name="{r.name}" time="{r.seconds:.3f}">')
        if not r.passed:
            lines.append(f'    <failure message="{escape(r.reason, {chr(34): "&quot;"})}"/>')
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


def report(target: str, results: list[CaseResult]) -> str:
    passed = sum(r.passed for r in results)
    lines = [f"61968-9 conformance against {target}: {passed} of {len(results)} cases passed", ""]
    lines += [f"  {'PASS' if r.passed else 'FAIL'}  {r.name}" + ("" if r.passed else f": {r.reason}") for r in results]
    return "\n".join(lines) + "\n"


def run(target: str | None) -> int:
    if not target:
        print("conformance cim needs --target URL (the endpoint's base, e.g. http://127.0.0.1:8080)")
        return 2
    results = Suite(target).run()
    out = Path(os.environ.get("MDMHUB_CONFORMANCE_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "cim-conformance.xml").write_text(junit(results), encoding="utf-8")
    text = report(target, results)
    (out / "cim-conformance.txt").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0 if all(r.passed for r in results) else 1
