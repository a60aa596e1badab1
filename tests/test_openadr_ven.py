"""The hub's VEN against a real openleadr VTN (OpenADRServer in this process on a free port), with the
head-end simulator underneath: events become reservations that really change the simulated meters'
contract capacity, and every answer reaches the VTN as oadrCreatedEvent."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from openleadr import OpenADRServer, enums, objects
from openleadr.service import VTNService, handler, service

from adapters.openadr.translate import load_mapping
from adapters.openadr.ven import HubVen, VtnConfig
from hub.ports import MeterRef
from hub.runtime import Hub
from hub.services.adr_policies import PolicyIn
from tests.collecting import Clock, collecting_hub, device_key, install_meters, set_head_end

VEN_ID = "ven-mdmhub-1"
VTN_ID = "VTN-TEST"
logging.getLogger("openleadr").setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@service("EiOpt")
class OptRecorder(VTNService):
    """openleadr's VTN mounts no EiOpt route: this one keeps each oadrCreateOpt and acknowledges it."""

    def __init__(self, vtn_id: str) -> None:
        super().__init__(vtn_id)
        self.opts: list[dict[str, Any]] = []

    @handler("oadrCreateOpt")
    async def create_opt(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.opts.append(payload)
        return "oadrCreatedOpt", {"opt_id": payload["opt_id"]}


class Vtn:
    """A real openleadr VTN (with an EiOpt endpoint) that registers any VEN as VEN_ID and can forget it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"
        self.registered: dict[str, str] = {}
        self.registrations = 0
        self.answers: list[tuple[str, str]] = []
        self.server = OpenADRServer(vtn_id=VTN_ID, http_host="127.0.0.1", http_port=self.port,
                                    requested_poll_freq=timedelta(seconds=0), ven_lookup=self.lookup,
                                    show_fingerprint=False, show_server_cert_domain=False)
        self.server.add_handler("on_create_party_registration", self.on_register)
        self.opt_service = OptRecorder(VTN_ID)
        self.server.app.add_routes([web.post(f"{self.server.http_path_prefix}/EiOpt", self.opt_service.handler)])

    @property
    def opts(self) -> list[tuple[str, int, str, str]]:
        return [(o["event_id"], o["modification_number"], o["opt_type"], o["opt_reason"])
                for o in self.opt_service.opts]

    def on_register(self, payload: dict[str, Any]) -> tuple[str, str]:
        self.registrations += 1
        self.registered[VEN_ID] = f"REG-{self.registrations}"
        return VEN_ID, self.registered[VEN_ID]

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        reg = self.registered.get(ven_id)
        return {"ven_id": ven_id, "registration_id": reg} if reg else None

    def on_answer(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.answers.append((event_id, opt_type))

    def event(self, event_id: str, start: datetime, minutes: int = 30, level: float = 2, mod: int = 0,
              status: str = "far", test: bool = False, targets: list[dict[str, str]] | None = None,
              signal_name: str = "SIMPLE") -> objects.Event:
        return objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=mod, market_context="http://dr.example/program",
                event_status=status, created_date_time=datetime.now(UTC), test_event=test, priority=1),
            active_period=objects.ActivePeriod(dtstart=start, duration=timedelta(minutes=minutes)),
            event_signals=[objects.EventSignal(
                signal_name=signal_name, signal_type="level", signal_id=f"{event_id}-s",
                intervals=[objects.Interval(dtstart=start, duration=timedelta(minutes=minutes),
                                            signal_payload=level, uid=0)])],
            targets=targets or [objects.Target(ven_id=VEN_ID)], response_required="always")

    def publish(self, event: objects.Event) -> None:
        """Add or replace (same eventID) an event in the VEN's queue."""
        queue = self.server.events.setdefault(VEN_ID, [])
        queue[:] = [e for e in queue if e.event_descriptor.event_id != event.event_descriptor.event_id]
        self.server.add_raw_event(ven_id=VEN_ID, event=event, callback=self.on_answer)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC).replace(second=0, microsecond=0))


def midday_zone(now: datetime) -> str:
    """A fixed-offset zone in which ``now`` is around noon. The clock is the real time (the VTN keeps
    real time), and a policy takes part only in windows within one local day: in UTC, a test run
    late in the evening would put its events across midnight."""
    offset = 12 - now.hour  # -11 .. +12 hours, all valid Etc/GMT zones (whose sign is inverted)
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


@pytest.fixture
def adr_hub(settings, clock) -> AsyncIterator[Hub]:
    settings = settings.model_copy(update={"openadr": settings.openadr.model_copy(
        update={"answer_grace_s": 2.0, "policy_timezone": midday_zone(clock.now)})})
    hub = collecting_hub(settings, clock)
    hub.adr.clock = clock
    install_meters(hub, {1: 3}, overrides={n: {"contract_amps": 30} for n in range(1, 4)})
    for ld in ("LD-000001", "LD-000002"):
        hub.adr.policies.create(PolicyIn(ld_id=ld, reduced_amps=20))
    yield hub
    hub.close()


@pytest.fixture
async def vtn() -> AsyncIterator[Vtn]:
    v = Vtn()
    await v.server.run_async()
    yield v
    await v.server.stop()


@pytest.fixture
async def ven(adr_hub, vtn) -> AsyncIterator[HubVen]:
    v = HubVen(adr_hub, VtnConfig(vtn.url, "mdmhub", poll_interval_s=0.05, retry_max_s=0.5, vtn_id=VTN_ID),
               load_mapping())
    await v.start()
    await until(lambda: v.registered)
    yield v
    await v.stop()


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = cond()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def contract(hub: Hub, ld_id: str) -> int:
    ref = MeterRef(ld_id, device_key(hub, ld_id), 2, 1)
    return (await hub.head_ends.port(1).status(ref)).contract_amps


def actions(hub: Hub) -> list[tuple[str, int, str, str]]:
    return [(a["event_id"], a["modification_number"], a["ld_id"], a["state"])
            for a in hub.adr.list_actions(limit=1000)["items"]]


async def settled(hub: Hub) -> None:
    await asyncio.sleep(0.2)
    await hub.adr.drain()


async def test_an_event_is_answered_opt_in_and_the_meters_are_cut_and_restored(adr_hub, vtn, ven, clock):
    start = clock.now + timedelta(minutes=10)
    vtn.publish(vtn.event("EV-1", start))
    assert await until(lambda: vtn.answers) == [("EV-1", "optIn")]
    await settled(adr_hub)
    assert sorted(actions(adr_hub)) == [("EV-1", 0, "LD-000001", "reserved"), ("EV-1", 0, "LD-000002", "reserved")]
    clock.now = start + timedelta(minutes=1)
    assert [await contract(adr_hub, ld) for ld in ("LD-000001", "LD-000002", "LD-000003")] == [20, 20, 30]
    clock.now = start + timedelta(minutes=31)
    assert await contract(adr_hub, "LD-000001") == 30


async def test_a_modification_moves_and_a_cancellation_restores(adr_hub, vtn, ven, clock):
    start = clock.now + timedelta(minutes=10)
    vtn.publish(vtn.event("EV-1", start))
    await until(lambda: vtn.answers)
    await settled(adr_hub)
    later = start + timedelta(hours=1)
    vtn.publish(vtn.event("EV-1", later, mod=1, level=3))
    await until(lambda: len(vtn.answers) == 2)
    await settled(adr_hub)
    assert vtn.answers[-1] == ("EV-1", "optIn")
    assert {(m, s) for _, m, _, s in actions(adr_hub)} == {(0, "released"), (1, "reserved")}
    clock.now = later + timedelta(minutes=1)
    assert await contract(adr_hub, "LD-000001") == 20
    sent: list[str] = []
    ven.add_hook("before_send_xml", sent.append)
    vtn.server.cancel_event(VEN_ID, "EV-1")     # modification 2, status cancelled
    created = await until(lambda: [x for x in sent if "oadrCreatedEvent" in x])
    assert "<ei:modificationNumber>2</ei:modificationNumber>" in created[0] and "optIn" in created[0]
    await settled(adr_hub)
    await until(lambda: not vtn.server.events[VEN_ID])   # the VTN drops the event once confirmed
    assert await contract(adr_hub, "LD-000001") == 30          # restored at once
    assert {s for _, m, _, s in actions(adr_hub) if m == 1} == {"cancelled"}


async def test_a_test_event_is_answered_and_no_meter_is_touched(adr_hub, vtn, ven, clock):
    vtn.publish(vtn.event("EV-T", clock.now + timedelta(minutes=10), test=True))
    assert await until(lambda: vtn.answers) == [("EV-T", "optIn")]
    await settled(adr_hub)
    assert actions(adr_hub) == []
    assert adr_hub.head_ends.port(1).reservations() == []


async def test_overlapping_events_take_the_lower_capacity(adr_hub, vtn, ven, clock):
    adr_hub.adr.policies.create(PolicyIn(ld_id="LD-000003", reduction_step_amps=5))
    start = clock.now + timedelta(minutes=10)
    vtn.publish(vtn.event("EV-A", start, minutes=60, level=1))            # LD-3: 25 A
    vtn.publish(vtn.event("EV-B", start + timedelta(minutes=30), minutes=60, level=3))  # LD-3: 15 A
    await until(lambda: len(vtn.answers) == 2)
    await settled(adr_hub)
    seen = []
    for minute in (1, 31, 61, 91):
        clock.now = start + timedelta(minutes=minute)
        seen.append(await contract(adr_hub, "LD-000003"))
    assert seen == [25, 15, 15, 30]


async def test_a_past_event_is_acknowledged_and_not_acted_on(adr_hub, vtn, ven, clock):
    vtn.publish(vtn.event("EV-OLD", clock.now + timedelta(minutes=10)))
    clock.now += timedelta(hours=3)  # the hub's clock has moved past the window before it arrives
    assert await until(lambda: vtn.answers) == [("EV-OLD", "optOut")]
    await settled(adr_hub)
    assert actions(adr_hub) == []
    assert "passed" in adr_hub.adr.list_events()["items"][0]["response_reason"]


async def test_no_matching_policy_and_unknown_targets_are_opted_out_with_the_reason(adr_hub, vtn, ven, clock):
    start = clock.now + timedelta(minutes=10)
    vtn.publish(vtn.event("EV-0", start, level=0))
    vtn.publish(vtn.event("EV-X", start, targets=[objects.Target(resource_id="LD-NOPE")]))
    await until(lambda: len(vtn.answers) == 2)
    assert sorted(vtn.answers) == [("EV-0", "optOut"), ("EV-X", "optOut")]
    reasons = {e["event_id"]: e["response_reason"] for e in adr_hub.adr.list_events()["items"]}
    assert "level 0" in reasons["EV-0"] and "LD-NOPE" in reasons["EV-X"]


async def test_a_malformed_event_is_refused_and_the_others_proceed(adr_hub, vtn, ven, clock):
    """openleadr's VTN will not send a SIMPLE level outside 0..3, so the level is changed on arrival
    (after schema validation, as a schema-valid payload from another VTN would carry it)."""
    sent: list[str] = []
    ven.add_hook("before_send_xml", sent.append)

    def corrupt(kind: str, payload: dict) -> None:
        for e in payload.get("events", []):
            if e["event_descriptor"]["event_id"] == "EV-BAD":
                e["event_signals"][0]["intervals"][0]["signal_payload"] = 7.0

    ven.add_hook("after_parse_xml", corrupt)
    start = clock.now + timedelta(minutes=10)
    vtn.publish(vtn.event("EV-BAD", start))
    vtn.publish(vtn.event("EV-SIG", start, signal_name="x-customSignal"))
    vtn.publish(vtn.event("EV-OTHER", start, targets=[objects.Target(ven_id="some-other-ven")]))
    vtn.publish(vtn.event("EV-OK", start))
    await until(lambda: len(vtn.answers) == 4)
    assert sorted(vtn.answers) == [("EV-BAD", "optOut"), ("EV-OK", "optIn"), ("EV-OTHER", "optOut"),
                                   ("EV-SIG", "optOut")]
    created = [x for x in sent if "oadrCreatedEvent" in x][-1]
    for code in (454, 460, 462):
        assert f"<ei:responseCode>{code}</ei:responseCode>" in created
    await settled(adr_hub)
    assert {e for e, *_ in actions(adr_hub)} == {"EV-OK"}


async def test_the_ven_registers_again_when_the_vtn_forgets_it(adr_hub, vtn, ven, clock):
    assert vtn.registrations == 1
    vtn.registered.clear()                      # a VTN restart: it no longer knows the VEN
    await until(lambda: vtn.registrations == 2)
    vtn.publish(vtn.event("EV-2", clock.now + timedelta(minutes=10)))
    assert await until(lambda: vtn.answers) == [("EV-2", "optIn")]


async def test_the_ven_keeps_polling_through_a_vtn_outage(adr_hub, ven, vtn, clock):
    await vtn.server.stop()
    await until(lambda: ven.failures >= 2)
    vtn.server = OpenADRServer(vtn_id=VTN_ID, http_host="127.0.0.1", http_port=vtn.port,
                               requested_poll_freq=timedelta(seconds=0), ven_lookup=vtn.lookup,
                               show_fingerprint=False, show_server_cert_domain=False)
    vtn.server.add_handler("on_create_party_registration", vtn.on_register)
    vtn.registered.clear()
    await vtn.server.run_async()
    vtn.publish(vtn.event("EV-3", clock.now + timedelta(minutes=10)))
    assert await until(lambda: vtn.answers, timeout=15) == [("EV-3", "optIn")]
    assert enums.EVENT_STATUS.CANCELLED == "cancelled"


async def test_an_event_whose_reservations_all_fail_after_opting_in_is_opted_out(adr_hub, vtn, ven, clock):
    """The answer goes out optIn while the reservations are still in progress (the head-end answers
    after the grace time); when every one of them then fails, the VEN sends oadrCreateOpt optOut."""
    adr_hub.adr.settings = adr_hub.adr.settings.model_copy(update={"answer_grace_s": 0.2})
    set_head_end(adr_hub, 1, latency_s=2.0, timeout_s=0.6)
    vtn.publish(vtn.event("EV-F", clock.now + timedelta(minutes=10)))
    assert await until(lambda: vtn.answers) == [("EV-F", "optIn")]
    assert await until(lambda: vtn.opts) == [("EV-F", 0, "optOut", "notParticipating")]
    assert {s for *_, s in actions(adr_hub)} == {"failed"}
    [stored] = adr_hub.adr.list_events()["items"]
    assert stored["response"] == "optOut" and "every reservation failed after the optIn" in stored["response_reason"]
    assert ven.opts_sent == [("EV-F", 0, True)]


async def test_an_event_with_a_reservation_held_is_not_opted_out(adr_hub, vtn, ven, clock):
    adr_hub.adr.settings = adr_hub.adr.settings.model_copy(update={"answer_grace_s": 0.2})
    set_head_end(adr_hub, 1, latency_s=0.5)
    vtn.publish(vtn.event("EV-S", clock.now + timedelta(minutes=10)))
    assert await until(lambda: vtn.answers) == [("EV-S", "optIn")]
    await settled(adr_hub)
    await adr_hub.adr.settle_withdrawals()
    assert {s for *_, s in actions(adr_hub)} == {"reserved"} and vtn.opts == []
