"""The 61968-9 edge's message handling, whatever the transport: one document in, one reply out.

Steps: classify and read the envelope, validate it against Message.xsd, check Verb and Noun against
the handlers served, answer a replayed MessageID with the first reply (acting once, across restarts:
the core's receipts keep each reply), hand the
message to the noun's handler (at once, or in the background when the request asks for an
asynchronous reply), and turn what happened into a ResponseMessage with the standard Result and
error codes. Nothing raised inside ever reaches the partner as a stack trace: unexpected errors are
logged and answered with the ``application-error`` code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from adapters.cim import codes, config_nouns, controls, events, readings, schemas
from adapters.cim.envelope import (
    EVENT_VERBS,
    ID,
    REQUEST_VERBS,
    EnvelopeError,
    ErrorItem,
    Header,
    Message,
    Payload,
    Reply,
    build_message,
    read_message,
    reply_to,
)
from adapters.cim.profile import Outcome
from adapters.cim.stream import Streamed
from adapters.xmlsafe import parse as parse_xml
from hub.services.errors import Conflict, InvalidInput, NotFound, ServiceError

if TYPE_CHECKING:
    from hub.config import CimSection
    from hub.runtime import Hub

log = logging.getLogger("mdmhub.cim")
Handler = Callable[["CimEdge", Message], Awaitable[Outcome]]
CHANNEL = "cim"

HANDLERS: dict[tuple[str, str], Handler] = {
    ("get", "MeterReadings"): readings.get,
    ("create", "MeterReadings"): readings.create,
    ("created", "MeterReadings"): readings.create,
    ("get", "EndDeviceEvents"): events.get,
    ("create", "MeterConfig"): config_nouns.create_meter,
    ("change", "MeterConfig"): config_nouns.change_meter,
    ("delete", "MeterConfig"): config_nouns.delete_meter,
    ("create", "UsagePointConfig"): config_nouns.create_usage_point,
    ("change", "UsagePointConfig"): config_nouns.create_usage_point,
    ("delete", "UsagePointConfig"): config_nouns.delete_usage_point,
    ("create", "EndDeviceControls"): controls.create,
    ("cancel", "EndDeviceControls"): controls.cancel,
}


def served() -> dict[str, list[str]]:
    """Noun -> verbs served (for the WSDL, the docs and the conformance runner)."""
    out: dict[str, list[str]] = {}
    for verb, noun in HANDLERS:
        out.setdefault(noun, []).append(verb)
    return out


def error_item(key: str, details: str, xpath: str | None = None, obj: ID | None = None) -> ErrorItem:
    row = codes.error(key)
    return ErrorItem(code=row.code, level=row.level, reason=row.reason, details=f"hub:{key}: {details}",
                     xpath=xpath, id=obj)


def lenient_header(root: etree._Element | None) -> Header:
    """Whatever Verb/Noun/MessageID/CorrelationID a broken message carries, to address the error reply."""
    h = Header(verb="reply", noun="")
    if root is None:
        return h
    for el in root.iter():
        if not isinstance(el.tag, str) or not el.text:
            continue
        name = etree.QName(el).localname
        if name == "Noun" and not h.noun:
            h.noun = el.text.strip()[:64]
        elif name == "MessageID" and not h.message_id:
            h.message_id = el.text.strip()[:128]
        elif name == "CorrelationID" and not h.correlation_id:
            h.correlation_id = el.text.strip()[:128]
    return h


class CimEdge:
    def __init__(self, hub: Hub, settings: CimSection) -> None:
        self.hub = hub
        self.settings = settings
        self._busy: dict[tuple[str, str], asyncio.Future[Message]] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.deliver: Callable[[str, Message, str], Awaitable[None]] | None = None  # set by the transport
        self.publisher: Any = None  # adapters.cim.publish.Publisher, set by install

    # helpers for handlers ------------------------------------------------------------------------

    def payload(self, el: etree._Element, profile: str) -> etree._Element:
        return schemas.validate_payload(el, profile)

    # processing ----------------------------------------------------------------------------------

    def failed(self, header: Header, key: str, details: str, xpath: str | None = None) -> Message:
        log.info("cim message refused", extra={"code": key, "details": details[:300], "noun": header.noun,
                                               "message_id": header.message_id})
        return reply_to(header, Reply("FAILED", [error_item(key, details, xpath)]), source=self.settings.source)

    async def process(self, root: etree._Element, transport: str = "http", streamed: Streamed | None = None) -> Message:
        """The reply to the document ``root``; ``streamed`` is its payload when
        :func:`adapters.cim.stream.read` left it to be read in batches (``root`` is then the skeleton)."""
        try:
            msg = read_message(root, self.settings.max_message_bytes * 4)
            schemas.validate_envelope(root, msg.kind)
            if streamed is not None and streamed.violation is not None:
                raise EnvelopeError(streamed.violation.key, streamed.violation.details, streamed.violation.xpath,
                                    msg)
        except EnvelopeError as exc:
            return self.failed(exc.message.header if exc.message else lenient_header(root), exc.key, exc.details,
                               exc.xpath)
        msg.stream = streamed
        h = msg.header
        if msg.kind in ("ResponseMessage", "FaultMessage"):
            return reply_to(h, Reply("OK", [error_item("ack", "reply received")]), source=self.settings.source)
        if msg.kind == "RequestMessage" and h.verb not in REQUEST_VERBS:
            return self.failed(h, "bad-verb", f"verb {h.verb} is not a request verb", "Header/Verb")
        if msg.kind == "EventMessage" and h.verb not in EVENT_VERBS:
            return self.failed(h, "bad-verb", f"verb {h.verb} is not an event verb", "Header/Verb")
        verbs = served()
        if h.noun not in verbs:
            return self.failed(h, "bad-noun", f"noun {h.noun} is not served; served: {', '.join(sorted(verbs))}",
                               "Header/Noun")
        handler = HANDLERS.get((h.verb, h.noun))
        if handler is None:
            return self.failed(h, "bad-verb", f"{h.verb} {h.noun} is not served; {h.noun} takes "
                               f"{', '.join(verbs[h.noun])}", "Header/Verb")
        if h.async_reply:
            address = h.reply_address or ""
            if not address or not any(address.startswith(p) for p in self.settings.reply_addresses):
                return self.failed(h, "bad-reply-address", f"ReplyAddress {address or '(none)'} is not an allowed "
                                   "reply endpoint", "Header/ReplyAddress")
        key = (h.source or "", h.message_id or "") if h.message_id and h.verb != "get" else None
        if key is not None:
            if key in self._busy:
                return await asyncio.shield(self._busy[key])
            earlier = await self._claim(h, key)
            if earlier is not None:
                return earlier
        if h.async_reply:
            ack = reply_to(h, Reply("OK", [error_item("ack", f"the reply goes to {h.reply_address}")],
                                    [ID(h.message_id or "", kind="transaction")]), source=self.settings.source)
            if key is not None:
                await self._remember(key, ack)
            task = asyncio.create_task(self._later(handler, msg, transport))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return ack
        if key is None:
            return await self._run(handler, msg)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._busy[key] = future
        try:
            response = await self._run(handler, msg)
            if msg.stream is not None and msg.stream.refused:  # found invalid late: not taken, as if refused at once
                await self.hub.run(self.hub.receipts.release, CHANNEL, *key)
            else:
                await self._remember(key, response)
            future.set_result(response)
            return response
        finally:
            self._busy.pop(key, None)
            if not future.done():
                future.cancel()

    async def _claim(self, h: Header, key: tuple[str, str]) -> Message | None:
        """None when this is the message's first copy (act on it); else the answer to a copy: the
        first reply again, or, while the first copy is (or was, before a crash) in hand, a refusal
        that says its outcome is not known, so the partner looks before resending anew."""
        claim = await self.hub.run(self.hub.receipts.claim, CHANNEL, *key)
        if claim.first:
            return None
        if claim.reply is not None:
            log.info("cim message replayed", extra={"message_id": h.message_id, "source": h.source})
            return read_message(parse_xml(claim.reply.encode("utf-8")))
        since = claim.received_at.isoformat() if claim.received_at else "earlier"
        return self.failed(h, "duplicate-unsettled", f"a message with MessageID {h.message_id} from this Source "
                           f"was taken in at {since} and its outcome is not known; check the objects' state, "
                           "then send again under a new MessageID", "Header/MessageID")

    async def _remember(self, key: tuple[str, str], response: Message) -> None:
        await self.hub.run(self.hub.receipts.record_reply, CHANNEL, *key, build_message(response).decode("utf-8"))

    async def _run(self, handler: Handler, msg: Message) -> Message:
        h = msg.header
        try:
            outcome = await handler(self, msg)
        except EnvelopeError as exc:
            return self.failed(h, exc.key, exc.details, exc.xpath)
        except ServiceError as exc:
            key = "not-found" if isinstance(exc, NotFound) else "conflict" if isinstance(exc, Conflict) else \
                "invalid-object" if isinstance(exc, InvalidInput) else "application-error"
            return self.failed(h, key, str(exc))
        except Exception:  # noqa: BLE001 - a partner gets a standard error, the log gets the trace
            log.exception("cim handler failed", extra={"verb": h.verb, "noun": h.noun, "message_id": h.message_id})
            return self.failed(h, "application-error", "the hub could not process the message; see its log")
        result = outcome.result()
        errors = outcome.errors
        if result == "OK":
            errors = []
        elif result == "PARTIAL":
            errors = [error_item("partial", f"{len(outcome.errors)} of the objects failed"), *errors]
        payload = Payload(elements=outcome.payload) if outcome.payload else None
        noun_verb = "reply"
        response = reply_to(h, Reply(result, errors, outcome.ids), payload, source=self.settings.source, verb=noun_verb)
        index = h.prop("MessageIndex")
        if index:
            response.header.properties.append(("MessageIndex", index))
        return response

    async def _later(self, handler: Handler, msg: Message, transport: str) -> None:
        response = await self._run(handler, msg)
        if self.deliver is None or not msg.header.reply_address:
            return
        try:
            await self.deliver(msg.header.reply_address, response, transport)
        except Exception:  # noqa: BLE001 - the partner may be down; the reply is logged as lost
            log.warning("asynchronous reply not delivered", exc_info=True,
                        extra={"reply_address": msg.header.reply_address, "correlation_id": msg.header.message_id})

    async def drain(self) -> None:
        """Wait for asynchronous replies under way (tests, shutdown)."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)
