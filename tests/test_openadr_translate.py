"""The OpenADR translator: openleadr's parsed event dicts (as produced from real XML by openleadr's
own codec) into the canonical DR event, and every malformed or unsupported part refused with the
OpenADR code to answer."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from openleadr import objects
from openleadr.messaging import create_message, parse_message

from adapters.openadr.translate import TranslationError, load_mapping, translate_event

T0 = datetime(2030, 6, 3, 1, 0, tzinfo=UTC)
MAPPING = load_mapping()


def wire_event(**over) -> dict:
    """An event built with openleadr's objects, rendered to XML and parsed back, as the VEN gets it."""
    ev = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="EV-9", modification_number=3, market_context="http://dr.example/program",
            event_status="far", created_date_time=T0 - timedelta(hours=1), priority=2, test_event=False),
        active_period=objects.ActivePeriod(dtstart=T0, duration=timedelta(hours=1),
                                           tolerance={"startafter": timedelta(minutes=5)},
                                           notification_period=timedelta(hours=2),
                                           ramp_up_period=timedelta(minutes=1), recovery_period=timedelta(minutes=3)),
        event_signals=[
            objects.EventSignal(signal_name="SIMPLE", signal_type="level", signal_id="S1", intervals=[
                objects.Interval(dtstart=T0, duration=timedelta(minutes=30), signal_payload=1, uid=0),
                objects.Interval(dtstart=T0 + timedelta(minutes=30), duration=timedelta(minutes=30),
                                 signal_payload=3, uid=1)]),
            objects.EventSignal(signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity", signal_id="S2",
                                intervals=[objects.Interval(dtstart=T0, duration=timedelta(hours=1),
                                                            signal_payload=0.5, uid=0)])],
        targets=[objects.Target(ven_id="VEN-1"), objects.Target(resource_id="LD-000001"),
                 objects.Target(group_id="tower-a"), objects.Target(party_id="CUST-7")],
        response_required="always")
    _, payload = parse_message(create_message("oadrDistributeEvent", request_id="R1", vtn_id="VTN", events=[ev]))
    event = payload["events"][0]
    for path, value in over.items():
        *parents, leaf = path.split(".")
        node = event
        for p in parents:
            node = node[p]
        node[leaf] = value
    return event


def test_every_part_of_the_event_is_carried_over():
    e = translate_event(wire_event(), ven_ids={"VEN-1"}, mapping=MAPPING)
    assert (e.event_id, e.modification_number, e.market_context, e.priority) == \
        ("EV-9", 3, "http://dr.example/program", 2)
    assert (e.dtstart, e.duration_s, e.tolerance_s, e.notification_s, e.ramp_up_s, e.recovery_s) == \
        (T0, 3600, 300, 7200, 60, 180)
    assert e.test is False and e.response_required is True
    simple, control = e.signals
    assert [(i.start, i.duration_s, i.value) for i in simple.intervals] == \
        [(T0, 1800, 1.0), (T0 + timedelta(minutes=30), 1800, 3.0)]
    assert e.level() == 3 and (control.name, control.type, control.peak) == ("LOAD_CONTROL", "x-loadControlCapacity", 0.5)
    assert e.targets.everything  # our own venID: the VEN as a whole (targets are OR'd)
    assert (e.targets.ld_ids, e.targets.cluster_ids, e.targets.customer_ids) == (("LD-000001",), ("tower-a",), ("CUST-7",))


def test_no_target_means_the_whole_ven_and_another_vens_id_is_unknown():
    assert translate_event(wire_event(targets=[]), ven_ids={"VEN-1"}, mapping=MAPPING).targets.everything
    other = translate_event(wire_event(targets=[{"ven_id": "VEN-2"}]), ven_ids={"VEN-1"}, mapping=MAPPING)
    assert not other.targets.everything and other.targets.unknown == (("ven_id", "VEN-2"),)


@pytest.mark.parametrize("value, expected", [(False, False), ("false", False), ("true", True),
                                             ("call 555-0100 first", True), (True, True)])
def test_any_test_event_value_but_false_is_a_test(value, expected):
    assert translate_event(wire_event(**{"event_descriptor.test_event": value}), ven_ids=set(),
                           mapping=MAPPING).test is expected


def test_the_randomisation_offset_is_stable_and_inside_the_tolerance():
    e = translate_event(wire_event(), ven_ids=set(), mapping=MAPPING)
    offsets = {e.offset_s(f"LD-{n}") for n in range(200)}
    assert all(0 <= o < 300 for o in offsets) and len(offsets) > 100
    assert e.offset_s("LD-1") == e.offset_s("LD-1")
    start, end = e.window("LD-1", 86400)
    assert end - start == timedelta(hours=1) and T0 <= start < T0 + timedelta(minutes=5)


def bad(event: dict) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        translate_event(event, ven_ids=set(), mapping=MAPPING)
    return info.value


@pytest.mark.parametrize("over, code, words", [
    ({"event_descriptor.event_id": ""}, 454, "eventID"),
    ({"event_descriptor.event_id": "x" * 200}, 454, "longer"),
    ({"event_descriptor.modification_number": -1}, 454, "modificationNumber"),
    ({"event_descriptor.event_status": "exploded"}, 454, "eventStatus"),
    ({"active_period.dtstart": datetime(2030, 6, 3, 1, 0)}, 454, "dtstart"),
    ({"active_period.dtstart": "2030-06-03T01:00:00+09:00"}, 454, "dtstart"),
    ({"active_period.duration": timedelta(hours=2)}, 454, "add up"),
    ({"event_signals": []}, 454, "no signals"),
    ({"event_descriptor.priority": -3}, 454, "priority"),
])
def test_malformed_events_are_refused_with_454(over, code, words):
    err = bad(wire_event(**over))
    assert err.code == code and words in err.reason


def test_a_simple_level_outside_0_to_3_is_refused():
    e = wire_event()
    e["event_signals"][0]["intervals"][1]["signal_payload"] = 4.0
    assert bad(e).code == 454


def test_an_event_with_only_unsupported_signals_is_refused_with_460():
    e = wire_event()
    e["event_signals"] = [copy.deepcopy(e["event_signals"][0])]
    e["event_signals"][0]["signal_name"] = "ELECTRICITY_PRICE"
    assert bad(e).code == 460


def test_not_an_event_at_all():
    for junk in (None, "event", [], {"event_descriptor": "x"}):
        assert bad(junk).code == 454


def test_the_mapping_table_can_alias_and_strip_prefixes(tmp_path: Path):
    table = tmp_path / "m.toml"
    table.write_text('[targets]\ngroup_id = "customer"\n[targets.strip_prefix]\nresource_id = "LD:"\n'
                     '[targets.aliases]\n"north" = { cluster = "C-N" }\n')
    m = load_mapping(table)
    e = translate_event(wire_event(targets=[{"resource_id": "LD:LD-7"}, {"group_id": "north"},
                                            {"group_id": "CUST-1"}]), ven_ids=set(), mapping=m)
    assert (e.targets.ld_ids, e.targets.cluster_ids, e.targets.customer_ids) == (("LD-7",), ("C-N",), ("CUST-1",))
    table.write_text('[targets]\ngroup_id = "everything"\n')
    with pytest.raises(ValueError, match="group_id"):
        load_mapping(table)
