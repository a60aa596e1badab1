"""Meter ADR in the core: DR events matched against policies become contract-capacity reservations on
the head-end simulator, and every change over an event's life (modification, cancellation, overlap,
test, past window) acts on the simulated meters as the standard asks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from hub.ports import MeterRef
from hub.runtime import Hub
from hub.services.adr import AdrService
from hub.services.adr_events import DrEvent, Interval, Signal, Targets
from hub.services.adr_policies import PolicyIn
from tests.collecting import Clock, collecting_hub, device_key, install_meters

NOW = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)  # a Wednesday, 10:00 in Tokyo
VTN = "VTN-1"


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def adr_hub(settings, clock) -> Iterator[Hub]:
    settings = settings.model_copy(update={"openadr": settings.openadr.model_copy(update={"answer_grace_s": 2.0})})
    hub = collecting_hub(settings, clock)
    hub.adr.clock = clock
    install_meters(hub, {1: 4}, overrides={n: {"contract_amps": 30, "cluster_id": "demo-tower-a" if n <= 2 else "demo-tower-b"}
                                           for n in range(1, 5)})
    yield hub
    hub.close()


def policy(hub: Hub, ld_id: str, **kw) -> int:
    data = {"ld_id": ld_id, "reduced_amps": 20, **kw}
    if "reduction_step_amps" in kw:
        data.pop("reduced_amps")
    return hub.adr.policies.create(PolicyIn(**data))["id"]


def event(event_id: str = "EV-1", mod: int = 0, *, start: timedelta = timedelta(minutes=10),
          minutes: int = 30, level: int = 2, targets: Targets | None = None, **kw) -> DrEvent:
    dtstart = NOW + start
    return DrEvent(event_id=event_id, modification_number=mod, dtstart=dtstart, duration_s=minutes * 60,
                   signals=(Signal("SIMPLE", "level", (Interval(dtstart, minutes * 60, level),)),),
                   targets=targets or Targets(everything=True), **kw)


def meter(hub: Hub, ld_id: str) -> MeterRef:
    return MeterRef(ld_id, device_key(hub, ld_id), 2, 1)


async def contract(hub: Hub, ld_id: str) -> int:
    return (await hub.head_ends.port(1).status(meter(hub, ld_id))).contract_amps


def actions(hub: Hub, **kw) -> list[dict]:
    return hub.adr.list_actions(limit=1000, **kw)["items"]


async def test_an_event_reserves_the_matching_meters_and_they_are_cut_at_start_and_restored_at_end(adr_hub, clock):
    policy(adr_hub, "LD-000001")
    policy(adr_hub, "LD-000002", reduction_step_amps=5)   # 30 - 5 x level 2 = 20... step
    policy(adr_hub, "LD-000003", signal_levels=[3])        # level 2 is not answered
    [answer] = await adr_hub.adr.receive(VTN, [event(level=2)])
    assert (answer.opt, answer.code) == ("optIn", 200)
    await adr_hub.adr.drain()
    got = {a["ld_id"]: (a["state"], a["reduced_amps"]) for a in actions(adr_hub)}
    assert got == {"LD-000001": ("reserved", 20), "LD-000002": ("reserved", 20)}
    assert await contract(adr_hub, "LD-000001") == 30            # not yet
    clock.advance(timedelta(minutes=15))
    assert await contract(adr_hub, "LD-000001") == 20            # cut at the start
    assert await contract(adr_hub, "LD-000003") == 30            # no match, untouched
    clock.advance(timedelta(minutes=30))
    assert await contract(adr_hub, "LD-000001") == 30            # restored at the end


async def test_the_same_modification_again_changes_nothing_and_gets_the_same_answer(adr_hub):
    policy(adr_hub, "LD-000001")
    first = await adr_hub.adr.receive(VTN, [event()])
    await adr_hub.adr.drain()
    again = await adr_hub.adr.receive(VTN, [event()])
    assert again[0].opt == first[0].opt == "optIn"
    assert len(actions(adr_hub)) == 1
    assert len(adr_hub.head_ends.port(1).reservations()) == 1
    assert adr_hub.adr.list_events()["total"] == 1


async def test_a_modification_moves_the_reservation_and_a_lower_number_is_refused(adr_hub, clock):
    policy(adr_hub, "LD-000001")
    await adr_hub.adr.receive(VTN, [event(mod=0)])
    await adr_hub.adr.drain()
    [answer] = await adr_hub.adr.receive(VTN, [event(mod=1, start=timedelta(minutes=60))])
    assert answer.opt == "optIn"
    await adr_hub.adr.drain()
    states = [(a["modification_number"], a["state"]) for a in actions(adr_hub)]
    assert states == [(0, "released"), (1, "reserved")]
    live = [r for r in adr_hub.head_ends.port(1).reservations() if r.state.value in ("pending", "active")]
    assert [(r.start, r.amps) for r in live] == [(NOW + timedelta(minutes=60), 20)]
    clock.advance(timedelta(minutes=15))
    assert await contract(adr_hub, "LD-000001") == 30            # the old window is free
    [old] = await adr_hub.adr.receive(VTN, [event(mod=0)])
    assert old.code == 450
    await adr_hub.adr.drain()
    assert [a["state"] for a in actions(adr_hub)] == ["released", "reserved"]


async def test_cancelling_restores_a_meter_already_cut(adr_hub, clock):
    policy(adr_hub, "LD-000001")
    await adr_hub.adr.receive(VTN, [event()])
    await adr_hub.adr.drain()
    clock.advance(timedelta(minutes=15))
    assert await contract(adr_hub, "LD-000001") == 20
    [answer] = await adr_hub.adr.receive(VTN, [event(mod=1, status="cancelled")])
    assert answer.opt == "optIn" and "cancellation confirmed" in answer.reason
    await adr_hub.adr.drain()
    assert await contract(adr_hub, "LD-000001") == 30
    assert [a["state"] for a in actions(adr_hub)] == ["cancelled"]


async def test_an_event_missing_from_a_later_complete_list_is_cancelled(adr_hub, clock):
    policy(adr_hub, "LD-000001")
    await adr_hub.adr.receive(VTN, [event("EV-A"), event("EV-B", start=timedelta(hours=2))])
    await adr_hub.adr.drain()
    await adr_hub.adr.receive(VTN, [event("EV-B", start=timedelta(hours=2))])
    await adr_hub.adr.drain()
    got = {a["event_id"]: a["state"] for a in actions(adr_hub)}
    assert got == {"EV-A": "cancelled", "EV-B": "reserved"}


async def test_a_test_event_is_answered_and_touches_no_meter(adr_hub):
    policy(adr_hub, "LD-000001")
    [answer] = await adr_hub.adr.receive(VTN, [event(test=True)])
    assert answer.opt == "optIn" and "test event" in answer.reason
    await adr_hub.adr.drain()
    assert actions(adr_hub) == []
    assert adr_hub.head_ends.port(1).reservations() == []
    assert adr_hub.adr.list_events()["items"][0]["test_event"] is True


async def test_a_past_window_is_acknowledged_and_not_acted_on(adr_hub):
    policy(adr_hub, "LD-000001")
    [answer] = await adr_hub.adr.receive(VTN, [event(start=timedelta(hours=-2))])
    assert answer.opt == "optOut" and "passed" in answer.reason
    assert actions(adr_hub) == []


async def test_overlapping_events_take_the_lower_capacity_and_restore_in_steps(adr_hub, clock):
    policy(adr_hub, "LD-000001", reduced_amps=20, signal_levels=[1])
    policy(adr_hub, "LD-000001", reduced_amps=15, signal_levels=[2])
    # A: level 1 (20 A) over +10..+70 min; B: level 2 (15 A) over +40..+100 min
    await adr_hub.adr.receive(VTN, [event("EV-A", level=1, minutes=60),
                                    event("EV-B", level=2, start=timedelta(minutes=40), minutes=60)])
    await adr_hub.adr.drain()
    assert {a["event_id"]: a["state"] for a in actions(adr_hub)} == {"EV-A": "reserved", "EV-B": "reserved"}
    seen = []
    for minute in (15, 45, 75, 105):
        clock.now = NOW + timedelta(minutes=minute)
        seen.append(await contract(adr_hub, "LD-000001"))
    assert seen == [20, 15, 15, 30]
    # B cancelled while both are in force: back to A's 20 A, then 30 A at A's end
    clock.now = NOW + timedelta(minutes=45)
    await adr_hub.adr.receive(VTN, [event("EV-A", level=1, minutes=60),
                                    event("EV-B", 1, level=2, start=timedelta(minutes=40), minutes=60,
                                          status="cancelled")])
    await adr_hub.adr.drain()
    assert await contract(adr_hub, "LD-000001") == 20
    clock.now = NOW + timedelta(minutes=75)
    assert await contract(adr_hub, "LD-000001") == 30


async def test_no_matching_policy_opts_out_with_the_reason(adr_hub):
    policy(adr_hub, "LD-000001", hour_from=0, hour_to=6)  # 10:00 Tokyo is outside
    policy(adr_hub, "LD-000002", min_notice_minutes=60)
    [answer] = await adr_hub.adr.receive(VTN, [event()])
    assert answer.opt == "optOut"
    assert "outside the policy's hours" in answer.reason and "notice" in answer.reason
    stored = adr_hub.adr.list_events()["items"][0]
    assert (stored["response"], stored["response_reason"]) == ("optOut", answer.reason)


async def test_targets_narrow_the_event_and_unknown_targets_are_refused(adr_hub):
    for ld in ("LD-000001", "LD-000002", "LD-000003"):
        policy(adr_hub, ld)
    [answer] = await adr_hub.adr.receive(VTN, [event("EV-C", targets=Targets(cluster_ids=("demo-tower-b",)))])
    assert answer.opt == "optIn"
    [unknown] = (await adr_hub.adr.receive(VTN, [event("EV-C", targets=Targets(cluster_ids=("demo-tower-b",))),
                                                 event("EV-X", targets=Targets(ld_ids=("LD-NOPE",)))]))[1:]
    assert (unknown.opt, unknown.code) == ("optOut", 462) and "LD-NOPE" in unknown.reason
    await adr_hub.adr.drain()
    assert {a["ld_id"] for a in actions(adr_hub)} == {"LD-000003"}


async def test_the_monthly_cap_and_the_single_event_opt_out(adr_hub):
    policy(adr_hub, "LD-000001", max_events_per_month=1)
    policy(adr_hub, "LD-000002", opt_out_event_id="EV-2")
    await adr_hub.adr.receive(VTN, [event("EV-1")])
    [second] = (await adr_hub.adr.receive(VTN, [event("EV-1"), event("EV-2", start=timedelta(hours=2))]))[1:]
    assert second.opt == "optOut"
    assert "monthly event cap reached" in second.reason and "opted out of this event" in second.reason


async def test_failed_reservations_are_recorded_and_the_answer_is_opt_out(adr_hub, clock):
    policy(adr_hub, "LD-000001")
    adr_hub.head_ends.port(1).set_outage(True)
    [answer] = await adr_hub.adr.receive(VTN, [event()])
    assert answer.opt == "optOut" and "failed" in answer.reason
    await adr_hub.adr.drain()
    [a] = actions(adr_hub)
    assert a["state"] == "failed" and "unreachable" in a["detail"]
    # back up: resuming reserves what failed
    adr_hub.head_ends.port(1).set_outage(False)
    assert await adr_hub.adr.resume() == 1
    assert actions(adr_hub)[0]["state"] == "reserved"


async def test_a_restarted_hub_keeps_the_reservations_it_holds(adr_hub, settings, clock):
    policy(adr_hub, "LD-000001")
    await adr_hub.adr.receive(VTN, [event()])
    await adr_hub.adr.drain()
    again = AdrService(adr_hub.db, adr_hub.head_ends, adr_hub.run, settings.openadr)
    again.clock = clock
    assert await again.resume() == 1
    assert len(adr_hub.head_ends.port(1).reservations()) == 1  # nothing reserved twice
    clock.advance(timedelta(minutes=15))
    assert await contract(adr_hub, "LD-000001") == 20
