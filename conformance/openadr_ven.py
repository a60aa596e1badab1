"""OpenADR 2.0b VEN conformance (``mdmhub conformance openadr-ven --vtn-port PORT [--hub-ven]``).

The suite plays the VTN: a real openleadr ``OpenADRServer`` on ``PORT`` (at
``http://HOST:PORT/OpenADR2/Simple/2.0b``), which any VEN may register with; ``--hub-ven`` also starts
this hub's own VEN against it. Every message the VEN sends, and what the VTN answered, is recorded
(a middleware in front of openleadr's handlers), and the cases check the recording: registration
(oadrQueryRegistration then oadrCreatePartyRegistration), oadrRequestEvent after registering, report
registration (TELEMETRY_USAGE in oadrRegisterReport) and delivery of a requested report, polling
not faster than asked, oadrDistributeEvent -> oadrCreatedEvent with one eventResponse per event
that asks for one (the distribute's requestID, eventID, modificationNumber, responseCode and
optType), a modification, a repeated modification answered alike, a cancellation, a test event,
and re-registration after the VTN forgets the VEN.

The events lie two hours ahead and every one still open is cancelled before the suite ends, so a
hub that reserved capacity for them releases it. Results go to ``conformance-openadr-ven.xml``
(JUnit) and ``conformance-openadr-ven.txt`` in ``$MDMHUB_CONFORMANCE_DIR`` (default: the current
folder); the exit code is 0 when every case passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web
from openleadr import OpenADRServer, objects
from openleadr.messaging import parse_message

VTN_ID = "MDMHUB-CONFORMANCE-VTN"
PROGRAM = "http://conformance.mdmhub.example/program"
UNSUPPORTED_SIGNAL = "x-conformanceUnsupported"
OTHER_VEN = "conformance-some-other-ven"
SIGNAL_NOT_SUPPORTED, TARGET_MISMATCH = 460, 462
log = logging.getLogger("mdmhub.conformance")


class CheckFailed(AssertionError):
    """A check did not hold; the message says what was expected."""


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


@dataclass
class Result:
    name: str
    status: str  # passed | failed
    seconds: float
    message: str = ""


@dataclass
class Message:
    """One request from the VEN and the VTN's answer to it."""

    at: float
    kind: str | None
    payload: dict[str, Any]
    answer_kind: str | None = None
    answer: dict[str, Any] = field(default_factory=dict)


def _parse(raw: bytes | str) -> tuple[str | None, dict[str, Any]]:
    try:
        kind, payload = parse_message(raw)
        return kind, payload if isinstance(payload, dict) else {}
    except Exception:  # noqa: BLE001 - anything unreadable is recorded as such
        return None, {}


class ConformanceVtn:
    """A real openleadr VTN that records the conversation and registers any VEN."""

    def __init__(self, port: int, host: str = "127.0.0.1", poll_s: int = 1, **server_options: Any) -> None:
        if int(poll_s) != poll_s or poll_s < 1:
            # xs:duration in 2.0b has no fractions: PT0.2S would reach the VEN as 0 s
            raise ValueError(f"the requested poll frequency must be whole seconds, not {poll_s}")
        self.port, self.host, self.poll_s = port, host, poll_s
        scheme = "https" if server_options.get("http_cert") else "http"
        self.url = f"{scheme}://{host}:{port}/OpenADR2/Simple/2.0b"
        self.log: list[Message] = []
        self.changed = asyncio.Event()
        self.ven_id: str | None = None
        self.registration_id: str | None = None
        self.registrations = 0
        self.known: dict[str, str] = {}
        self.report_requests: dict[str, tuple[str, str]] = {}  # reportRequestID -> (specifier, rID)
        self.server = OpenADRServer(vtn_id=VTN_ID, http_host=host, http_port=port,
                                    requested_poll_freq=timedelta(seconds=poll_s), ven_lookup=self.lookup,
                                    show_fingerprint=False, show_server_cert_domain=False, **server_options)
        self.server.add_handler("on_create_party_registration", self.on_register)
        self.server.add_handler("on_register_report", self.on_register_report)
        reports = self.server.services["report_service"]
        reports.handlers["oadrUpdateReport"] = self.on_update_report
        self.server.app.middlewares.append(self._record)

    # the VTN's side -----------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        body = await request.read()
        kind, payload = _parse(body)
        entry = Message(time.monotonic(), kind, payload)
        response = await handler(request)
        text = getattr(response, "text", None)
        if text:
            entry.answer_kind, entry.answer = _parse(text)
        self.log.append(entry)
        self.changed.set()
        return response

    def on_register(self, payload: dict[str, Any]) -> tuple[str, str]:
        self.registrations += 1
        ven_id = payload.get("ven_id") or self.ven_id or "conformance-ven-1"
        self.ven_id, self.registration_id = ven_id, f"CONF-REG-{self.registrations}"
        self.known[ven_id] = self.registration_id
        return ven_id, self.registration_id

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        reg = self.known.get(ven_id)
        return {"ven_id": ven_id, "registration_id": reg} if reg else None

    def forget(self) -> None:
        """As after a VTN restart: the VEN is unknown, so its next request is answered
        oadrRequestReregistration."""
        self.known.clear()

    def on_register_report(self, ven_id: str, resource_id: str, measurement: str, unit: str, scale: str,
                           min_sampling_interval: timedelta, max_sampling_interval: timedelta) -> tuple[Any, ...]:
        sampling = max(min_sampling_interval or timedelta(seconds=1), timedelta(seconds=1))
        if max_sampling_interval:
            sampling = min(sampling, max_sampling_interval)
        return (lambda values: None), sampling

    async def on_update_report(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Accept every update (the recording keeps it); openleadr's own handler only copes with
        float payloads."""
        return "oadrUpdatedReport", {}

    # publishing events ----------------------------------------------------------------------------

    def event(self, event_id: str, *, mod: int = 0, level: float = 1, signal_name: str = "SIMPLE",
              test: bool = False, target_ven: str | None = None, response_required: str = "always",
              start: datetime | None = None) -> objects.Event:
        start = start or (datetime.now(UTC) + timedelta(hours=2)).replace(second=0, microsecond=0)
        return objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=mod, market_context=PROGRAM, event_status="far",
                created_date_time=datetime.now(UTC), test_event=test, priority=1),
            active_period=objects.ActivePeriod(dtstart=start, duration=timedelta(minutes=30)),
            event_signals=[objects.EventSignal(
                signal_name=signal_name, signal_type="level", signal_id=f"{event_id}-signal",
                intervals=[objects.Interval(dtstart=start, duration=timedelta(minutes=30),
                                            signal_payload=level, uid=0)])],
            targets=[objects.Target(ven_id=target_ven or self.ven_id)], response_required=response_required)

    def publish(self, *events: objects.Event) -> None:
        """Add or replace (same eventID) events; the next poll gets the VEN's whole list."""
        assert self.ven_id is not None
        queue = self.server.events.setdefault(self.ven_id, [])
        ids = {e.event_descriptor.event_id for e in events}
        queue[:] = [e for e in queue if e.event_descriptor.event_id not in ids]
        for e in events:
            self.server.add_raw_event(ven_id=self.ven_id, event=e, callback=self._opt)

    @staticmethod
    def _opt(ven_id: str, event_id: str, opt_type: str) -> None:
        """openleadr wants a callback per event; the recording already holds the answer."""

    def resend(self) -> None:
        """Deliver the current list again at the next poll."""
        assert self.ven_id is not None
        self.server.events_updated[self.ven_id] = True

    def cancel(self, event_id: str) -> int:
        """Cancel (modification number + 1, status cancelled); returns the new number."""
        assert self.ven_id is not None
        self.server.cancel_event(self.ven_id, event_id)
        event = next(e for e in self.server.events[self.ven_id] if e.event_descriptor.event_id == event_id)
        return int(event.event_descriptor.modification_number)

    def open_events(self) -> list[str]:
        return [e.event_descriptor.event_id for e in self.server.events.get(self.ven_id or "", [])
                if e.event_descriptor.event_status != "cancelled"]

    # reading the conversation ------------------------------------------------------------------

    def since(self, mark: int, kind: str | None = None) -> list[Message]:
        return [m for m in self.log[mark:] if kind is None or m.kind == kind]

    async def wait_for(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"no {what} within {timeout:g} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    def distributions(self, mark: int = 0) -> list[Message]:
        """The VTN's oadrDistributeEvent answers (to polls or oadrRequestEvent) since ``mark``."""
        return [m for m in self.log[mark:] if m.answer_kind == "oadrDistributeEvent"]

    def responses(self, mark: int, event_id: str, mod: int | None = None) -> list[tuple[Message, dict[str, Any]]]:
        """Every eventResponse for ``event_id`` (and modification ``mod``) in oadrCreatedEvents since ``mark``."""
        out = []
        for m in self.since(mark, "oadrCreatedEvent"):
            for r in _event_responses(m.payload):
                if str(r.get("event_id")) == event_id and (mod is None or r.get("modification_number") == mod):
                    out.append((m, r))
        return out


def _event_responses(payload: dict[str, Any]) -> list[dict[str, Any]]:
    got = payload.get("event_responses") or []
    return got if isinstance(got, list) else [got]


def _events_in(m: Message) -> list[str]:
    return [str(e["event_descriptor"]["event_id"]) for e in m.answer.get("events") or []]


# the cases ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the cases share: the VTN, the time each may wait, and what earlier cases learnt."""

    vtn: ConformanceVtn
    wait_s: float
    answer_s: float
    answers: dict[str, str] = field(default_factory=dict)  # eventID -> optType first given


async def case_registration(r: Run) -> None:
    vtn = r.vtn
    create = await vtn.wait_for(lambda: vtn.since(0, "oadrCreatePartyRegistration"), r.wait_s,
                                "oadrCreatePartyRegistration")
    first = create[0]
    queries = [m for m in vtn.since(0, "oadrQueryRegistration") if m.at <= first.at]
    expect(bool(queries), "the VEN did not send oadrQueryRegistration before oadrCreatePartyRegistration")
    p = first.payload
    expect(bool(p.get("ven_name")), "oadrCreatePartyRegistration carries no oadrVenName")
    expect(p.get("profile_name") == "2.0b", f"oadrProfileName is {p.get('profile_name')!r}, expected 2.0b")
    expect(p.get("transport_name") == "simpleHttp", f"oadrTransportName is {p.get('transport_name')!r}")
    expect(p.get("http_pull_model") is True, "oadrHttpPullModel is not true (this suite only pulls)")
    expect(first.answer_kind == "oadrCreatedPartyRegistration" and bool(first.answer.get("registration_id")),
           f"the VTN did not register the VEN (answer {first.answer_kind})")
    early = [m.kind for m in vtn.log if m.at < first.at
             and m.kind not in ("oadrQueryRegistration", "oadrCreatePartyRegistration")]
    expect(not early, f"the VEN sent {early} before it was registered (N1_0080)")


async def case_request_event_after_registration(r: Run) -> None:
    vtn = r.vtn
    first = vtn.since(0, "oadrCreatePartyRegistration")[0]
    got = await vtn.wait_for(lambda: [m for m in vtn.since(0, "oadrRequestEvent") if m.at >= first.at],
                             r.answer_s, "oadrRequestEvent after registration (E1_1050)")
    expect(got[0].payload.get("ven_id") == vtn.ven_id,
           f"oadrRequestEvent carries venID {got[0].payload.get('ven_id')!r}, assigned {vtn.ven_id!r}")


async def case_report_registration(r: Run) -> None:
    vtn = r.vtn
    got = await vtn.wait_for(lambda: vtn.since(0, "oadrRegisterReport"), r.answer_s, "oadrRegisterReport")
    reports = got[0].payload.get("reports") or []
    names = [str(x.get("report_name")) for x in reports]
    expect("METADATA_TELEMETRY_USAGE" in names, f"oadrRegisterReport offers {names}, no METADATA_TELEMETRY_USAGE")
    for rep in reports:
        for d in rep.get("report_descriptions") or []:
            expect(bool(d.get("r_id")), f"a report description of {rep.get('report_name')} has no rID")
            expect(bool(d.get("sampling_rate")), f"rID {d.get('r_id')} has no oadrSamplingRate")
    expect(got[0].answer_kind == "oadrRegisteredReport", f"the VTN answered {got[0].answer_kind}")


async def case_report_delivery(r: Run) -> None:
    """The VTN requested every offered data point in oadrRegisteredReport: the VEN confirms with
    oadrCreatedReport and sends oadrUpdateReport for the request."""
    vtn = r.vtn
    registered = vtn.since(0, "oadrRegisterReport")
    expect(bool(registered), "no oadrRegisterReport to request from")
    requests = {str(q["report_request_id"]) for m in registered for q in m.answer.get("report_requests") or []}
    expect(bool(requests), "the VTN requested nothing (the VEN offered no report it could request)")

    def created() -> set[str]:
        return {str(p.get("report_request_id")) for m in vtn.since(0, "oadrCreatedReport")
                for p in m.payload.get("pending_reports") or []}
    await vtn.wait_for(lambda: requests & created(), r.answer_s, "oadrCreatedReport naming a requested report")
    updates = await vtn.wait_for(lambda: [m for m in vtn.since(0, "oadrUpdateReport")
                                          if requests & {str(x.get("report_request_id"))
                                                         for x in m.payload.get("reports") or []}],
                                 max(r.answer_s, 5.0), "oadrUpdateReport for a requested report")
    intervals = [i for m in updates for x in m.payload["reports"] for i in x.get("intervals") or []]
    expect(bool(intervals), "the oadrUpdateReport carries no intervals")


async def case_polling(r: Run) -> None:
    vtn = r.vtn
    polls = await vtn.wait_for(lambda: (lambda p: p if len(p) >= 3 else None)(vtn.since(0, "oadrPoll")),
                               r.answer_s + 3 * vtn.poll_s, "three oadrPoll")
    expect(all(m.payload.get("ven_id") == vtn.ven_id for m in polls),
           "an oadrPoll does not carry the venID the VTN assigned")
    gaps = [b.at - a.at for a, b in zip(polls, polls[1:], strict=False)]
    expect(min(gaps) >= 0.9 * vtn.poll_s,
           f"the VEN polled {min(gaps):.2f} s after the previous poll; the VTN asked for {vtn.poll_s:g} s")


async def _answered(r: Run, mark: int, event_id: str, mod: int) -> tuple[Message, dict[str, Any]]:
    try:
        got = await r.vtn.wait_for(lambda: r.vtn.responses(mark, event_id, mod), r.answer_s,
                                   f"oadrCreatedEvent answering {event_id} modification {mod}")
    except CheckFailed as exc:
        seen = [(x.get("event_id"), x.get("modification_number")) for m in r.vtn.since(mark, "oadrCreatedEvent")
                for x in _event_responses(m.payload)]
        raise CheckFailed(f"{exc}; the VEN's eventResponses named {seen}" if seen else str(exc)) from None
    return got[0]


def _check_response(r: Run, m: Message, resp: dict[str, Any], event_id: str) -> None:
    """The requestID must be that of the distribute it answers (the latest one carrying the event
    before the answer)."""
    sent = [d for d in r.vtn.distributions() if d.at <= m.at and event_id in _events_in(d)]
    expect(bool(sent), f"{event_id} was answered before it was distributed")
    want = sent[-1].answer.get("request_id")
    expect(resp.get("request_id") == want,
           f"eventResponse for {event_id} carries requestID {resp.get('request_id')!r}, "
           f"the distribute's is {want!r}")
    expect(resp.get("opt_type") in ("optIn", "optOut"), f"optType {resp.get('opt_type')!r}")


async def case_event_answered(r: Run) -> None:
    vtn = r.vtn
    mark = len(vtn.log)
    vtn.publish(vtn.event("CONF-EV-A"))
    m, resp = await _answered(r, mark, "CONF-EV-A", 0)
    _check_response(r, m, resp, "CONF-EV-A")
    expect(resp.get("response_code") == 200, f"responseCode {resp.get('response_code')} for a valid event")
    expect(m.payload.get("ven_id") == vtn.ven_id, f"oadrCreatedEvent venID {m.payload.get('ven_id')!r}")
    expect(m.answer_kind == "oadrResponse" and (m.answer.get("response") or {}).get("response_code") == 200,
           f"the VTN refused the oadrCreatedEvent: {m.answer.get('response')}")
    r.answers["CONF-EV-A"] = resp["opt_type"]


async def case_one_response_per_event(r: Run) -> None:
    """One distribute with four more events: one eventResponse for each that requires one, none
    for the one that says never; optOut for an event targeted at another VEN, optOut with 460 for
    an unsupported signal."""
    vtn = r.vtn
    mark = len(vtn.log)
    vtn.publish(vtn.event("CONF-EV-B", level=2), vtn.event("CONF-EV-NEVER", response_required="never"),
                vtn.event("CONF-EV-OTHER", target_ven=OTHER_VEN),
                vtn.event("CONF-EV-SIGNAL", signal_name=UNSUPPORTED_SIGNAL))
    m, _ = await _answered(r, mark, "CONF-EV-B", 0)
    dist = [d for d in vtn.distributions(mark) if d.at <= m.at and "CONF-EV-B" in _events_in(d)][-1]
    listed = _events_in(dist)
    answered = [str(x.get("event_id")) for x in _event_responses(m.payload)]
    required = [e for e in listed if e != "CONF-EV-NEVER"]
    expect(sorted(answered) == sorted(required),
           f"the distribute listed {listed}; the oadrCreatedEvent answered {answered} "
           f"(expected exactly one eventResponse per event with oadrResponseRequired always)")
    by_id = {str(x.get("event_id")): x for x in _event_responses(m.payload)}
    for event_id, x in by_id.items():
        _check_response(r, m, x, event_id)
    other, signal = by_id["CONF-EV-OTHER"], by_id["CONF-EV-SIGNAL"]
    expect(other.get("opt_type") == "optOut" and other.get("response_code") in (200, TARGET_MISMATCH),
           f"an event targeted at another VEN was answered {other.get('opt_type')} / {other.get('response_code')}, "
           f"expected optOut with 200 or {TARGET_MISMATCH}")
    expect(signal.get("opt_type") == "optOut" and signal.get("response_code") == SIGNAL_NOT_SUPPORTED,
           f"an event with signal {UNSUPPORTED_SIGNAL} was answered {signal.get('opt_type')} / "
           f"{signal.get('response_code')}, expected optOut with {SIGNAL_NOT_SUPPORTED}")
    expect(by_id["CONF-EV-B"].get("response_code") == 200, "responseCode for a valid event is not 200")
    if "CONF-EV-A" in by_id:
        expect(by_id["CONF-EV-A"].get("opt_type") == r.answers.get("CONF-EV-A"),
               "an event already answered was answered differently without a new modification")


async def case_modification(r: Run) -> None:
    vtn = r.vtn
    mark = len(vtn.log)
    vtn.publish(vtn.event("CONF-EV-A", mod=1, level=3))
    m, resp = await _answered(r, mark, "CONF-EV-A", 1)
    _check_response(r, m, resp, "CONF-EV-A")
    expect(resp.get("response_code") == 200, f"responseCode {resp.get('response_code')} for modification 1")
    r.answers["CONF-EV-A"] = resp["opt_type"]


async def case_same_modification_answered_alike(r: Run) -> None:
    vtn = r.vtn
    mark = len(vtn.log)
    vtn.resend()
    m, resp = await _answered(r, mark, "CONF-EV-A", 1)
    expect(resp.get("opt_type") == r.answers.get("CONF-EV-A"),
           f"modification 1 delivered again was answered {resp.get('opt_type')}, first {r.answers.get('CONF-EV-A')}")


async def case_cancellation(r: Run) -> None:
    vtn = r.vtn
    mark = len(vtn.log)
    mod = vtn.cancel("CONF-EV-A")
    m, resp = await _answered(r, mark, "CONF-EV-A", mod)
    _check_response(r, m, resp, "CONF-EV-A")
    expect(resp.get("response_code") == 200, f"responseCode {resp.get('response_code')} for the cancellation")


async def case_test_event(r: Run) -> None:
    vtn = r.vtn
    mark = len(vtn.log)
    vtn.publish(vtn.event("CONF-EV-TEST", test=True))
    m, resp = await _answered(r, mark, "CONF-EV-TEST", 0)
    _check_response(r, m, resp, "CONF-EV-TEST")
    expect(resp.get("response_code") == 200, f"responseCode {resp.get('response_code')} for a test event")


async def case_reregistration(r: Run) -> None:
    vtn = r.vtn
    before = vtn.registrations
    mark = len(vtn.log)
    vtn.forget()
    await vtn.wait_for(lambda: [m for m in vtn.since(mark) if m.answer_kind == "oadrRequestReregistration"],
                       r.answer_s, "request the VTN could answer with oadrRequestReregistration")
    await vtn.wait_for(lambda: vtn.registrations > before, r.answer_s,
                       "oadrCreatePartyRegistration after oadrRequestReregistration")
    again = vtn.since(mark, "oadrCreatePartyRegistration")[-1]
    polls = await vtn.wait_for(lambda: [m for m in vtn.since(mark, "oadrPoll") if m.at > again.at
                                        and m.answer_kind != "oadrRequestReregistration"],
                               r.answer_s, "oadrPoll accepted after registering again")
    expect(polls[0].payload.get("ven_id") == vtn.ven_id, "the VEN polls with another venID after registering again")
    mark = len(vtn.log)
    vtn.publish(vtn.event("CONF-EV-AFTER"))
    await _answered(r, mark, "CONF-EV-AFTER", 0)


CASES: list[Callable[[Run], Awaitable[None]]] = [
    case_registration, case_request_event_after_registration, case_report_registration, case_report_delivery,
    case_polling, case_event_answered, case_one_response_per_event, case_modification,
    case_same_modification_answered_alike, case_cancellation, case_test_event, case_reregistration,
]


async def cancel_open_events(vtn: ConformanceVtn, timeout: float) -> None:
    """Leave the VEN with nothing planned: cancel what is still open and wait for the answers."""
    if vtn.ven_id is None:
        return
    mark = len(vtn.log)
    pending = {event_id: vtn.cancel(event_id) for event_id in vtn.open_events()}
    try:
        await vtn.wait_for(lambda: all(vtn.responses(mark, e, mod) for e, mod in pending.items()
                                       if e != "CONF-EV-NEVER"), timeout, "answers to the final cancellations")
    except CheckFailed as exc:
        log.warning("conformance: %s", exc)


async def run_cases(vtn: ConformanceVtn, *, wait_s: float = 120.0, answer_s: float = 15.0) -> list[Result]:
    """Run every case in order against whatever VEN registers with ``vtn`` (already serving).
    When registration fails, the others fail at once with that reason."""
    r = Run(vtn, wait_s, answer_s)
    results: list[Result] = []
    for case in CASES:
        name = case.__name__.removeprefix("case_")
        started = time.perf_counter()
        if results and results[0].status == "failed":
            results.append(Result(name, "failed", 0.0, "not run: the VEN did not register"))
            continue
        try:
            await case(r)
            results.append(Result(name, "passed", time.perf_counter() - started))
        except CheckFailed as exc:
            results.append(Result(name, "failed", time.perf_counter() - started, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a crash in one case is that case's failure
            results.append(Result(name, "failed", time.perf_counter() - started,
                                  f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
    await cancel_open_events(vtn, answer_s)
    return results


def junit_xml(results: list[Result], vtn_url: str) -> str:
    failures = sum(r.status == "failed" for r in results)
    cases = []
    for r in results:
        inner = ""
        if r.status == "failed":
            first = r.message.splitlines()[0] if r.message else ""
            inner = f"<failure message={quoteattr(first)}>{escape(r.message)}</failure>"
        cases.append(f'  <testcase classname="openadr-ven" name={quoteattr(r.name)} time="{r.seconds:.3f}">'
                     f"{inner}</testcase>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="openadr-ven" tests="{len(results)}" '
            f'failures="{failures}" skipped="0" hostname={quoteattr(vtn_url)}>\n' + "\n".join(cases)
            + "\n</testsuite>\n")


def report_text(results: list[Result], vtn_url: str, ven_id: str | None) -> str:
    lines = [f"OpenADR 2.0b VEN conformance: VEN {ven_id or '(none registered)'} against the test VTN at {vtn_url}",
             ""]
    for r in results:
        mark = "PASS" if r.status == "passed" else "FAIL"
        lines.append(f"  {mark}  {r.name}" + (f"  -- {r.message.splitlines()[0]}" if r.message else ""))
    passed = sum(r.status == "passed" for r in results)
    lines += ["", f"{passed} passed, {len(results) - passed} failed"]
    return "\n".join(lines) + "\n"


def write_results(results: list[Result], vtn: ConformanceVtn, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conformance-openadr-ven.xml").write_text(junit_xml(results, vtn.url), encoding="utf-8")
    text = report_text(results, vtn.url, vtn.ven_id)
    (folder / "conformance-openadr-ven.txt").write_text(text, encoding="utf-8")
    return text


async def _run(vtn_port: int, host: str, hub_ven: bool, config: Path | None, wait_s: float) -> list[Result]:
    vtn = ConformanceVtn(vtn_port, host)
    await vtn.server.run_async()
    ven, hub = None, None
    try:
        if hub_ven:
            hub, ven = _hub_ven(vtn, config)
            await ven.start()
        else:
            print(f"test VTN (vtnID {VTN_ID}) waiting {wait_s:g} s for a VEN at {vtn.url}", file=sys.stderr)
        results = await run_cases(vtn, wait_s=wait_s)
        print(write_results(results, vtn, Path(os.environ.get("MDMHUB_CONFORMANCE_DIR", "."))), end="")
        return results
    finally:
        if ven is not None:
            await ven.stop()
        if hub is not None:
            hub.close()
        await vtn.server.stop()


def _hub_ven(vtn: ConformanceVtn, config: Path | None) -> tuple[Any, Any]:
    """This hub's VEN (its configured store and head-ends), pointed at the test VTN."""
    from adapters.openadr.translate import load_mapping
    from adapters.openadr.ven import HubVen, VtnConfig
    from hub.config import load_settings
    from hub.migrate import upgrade
    from hub.runtime import Hub

    settings = load_settings(config)
    hub = Hub(settings)
    upgrade(hub.db.engine)
    s = settings.openadr
    cfg = VtnConfig(vtn.url, s.ven_name, s.ven_id, VTN_ID, None, poll_interval_s=vtn.poll_s,
                    retry_max_s=max(vtn.poll_s, 1.0))
    return hub, HubVen(hub, cfg, load_mapping(s.mapping_file))


def run(target: str | None, vtn_port: int | None = None, hub_ven: bool = False, config: Path | None = None,
        wait_s: float | None = None) -> int:
    if not vtn_port:
        print("usage: mdmhub conformance openadr-ven --vtn-port PORT [--hub-ven] [--target HOST]", file=sys.stderr)
        return 2
    wait = wait_s if wait_s is not None else float(os.environ.get("MDMHUB_CONFORMANCE_WAIT_S", "120"))
    results = asyncio.run(_run(vtn_port, target or "127.0.0.1", hub_ven, config, wait))
    return 1 if any(r.status == "failed" for r in results) else 0

