"""MQTT push units against the real Mosquitto broker on 127.0.0.1:1883 (started by .ci/run).

Each test publishes on its own topic prefix with a real client and checks what the hub stored,
counted and alerted. If the broker is down these tests fail; they never skip.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest

from adapters.mqtt import MappingError, UnitReading, UnitSubscriber, build_subscriber, load_mapping, parse_mapping
from hub.config import MqttSection
from hub.ports import RegisterRead
from hub.runtime import Hub
from hub.services.registry import DeviceRegistration

BROKER = ("127.0.0.1", 1883)
TIME_JST = "2026-11-23T09:30:00+09:00"
TIME_UTC = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)


def broker_up() -> None:
    try:
        socket.create_connection(BROKER, timeout=2).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not reachable at {BROKER[0]}:{BROKER[1]}: {exc}. Start it with "
                    "`mosquitto -d -c /etc/mosquitto/mosquitto.conf` (.ci/run does)", pytrace=False)


def register_unit(hub: Hub, ld_id: str, *, serial: str | None = None, mac: str | None = None) -> None:
    hub.registry.register(DeviceRegistration(type_id=11, ld_type_id=101, he_id=1, serial=serial, mac=mac,
                                             ld_id=ld_id, config_state=1))


class Recorder:
    """The ingest and alert ends of the subscriber, recording what reaches them."""

    def __init__(self) -> None:
        self.reads: list[RegisterRead] = []
        self.unknown: list[tuple[str, list[UnitReading]]] = []

    async def ingest(self, reads: list[RegisterRead]) -> dict[str, int]:
        self.reads.extend(reads)
        return {"stored": len(reads)}

    async def on_unknown(self, unit_id: str, readings: list[UnitReading]) -> None:
        self.unknown.append((unit_id, readings))


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


Publish = Callable[[str, str | bytes], Awaitable[None]]


@pytest.fixture
async def units(catalog: Hub) -> AsyncIterator[tuple[UnitSubscriber, Recorder, Publish]]:
    """A running subscriber on a unique prefix (``<prefix>/meters/{unit_id}/energy[/csv]``), the
    recorder behind it, and a publisher that takes topics relative to the prefix."""
    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    table = load_mapping()
    mapping = parse_mapping({"topic": [family.model_dump() | {"pattern": f"{prefix}/{family.pattern}"}
                                       for family in table.topics]})
    catalog.settings.mqtt = MqttSection(enabled=True, host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}",
                                        persistent_session=False, flush_seconds=0.05, batch_size=3)
    recorder = Recorder()
    subscriber = build_subscriber(catalog, recorder.ingest, recorder.on_unknown, mapping=mapping)
    await subscriber.start()
    try:
        await asyncio.wait_for(subscriber.connected.wait(), 5)
    except TimeoutError:
        await subscriber.stop()
        pytest.fail("the subscriber did not connect to the broker within 5 s")
    async with aiomqtt.Client(*BROKER, identifier=f"unit-{prefix}") as publisher:
        async def publish(topic: str, payload: str | bytes) -> None:
            await publisher.publish(f"{prefix}/{topic}", payload, qos=1)

        yield subscriber, recorder, publish
    await subscriber.stop()


def test_packaged_mapping_table_has_json_and_csv_energy_feeding_register_1() -> None:
    table = load_mapping()
    json_family, unit = table.match("meters/UNIT-7/energy")  # type: ignore[misc]
    assert (json_family.format, unit, json_family.registers, json_family.ld_address) == (
        "json", "UNIT-7", {"kwh": 1}, 2)
    csv_family, unit = table.match("meters/UNIT-7/energy/csv")  # type: ignore[misc]
    assert (csv_family.format, csv_family.columns, unit) == ("csv", ("unit", "time", "kwh"), "UNIT-7")
    assert table.match("meters/UNIT-7/power") is None
    assert table.topic_filters == ["meters/+/energy", "meters/+/energy/csv"]


@pytest.mark.parametrize("bad, reason", [
    ({"topic": []}, "at least one"),
    ({"topic": [{"name": "x", "pattern": "meters/energy", "format": "json", "registers": {"kwh": 1}}]}, "{unit_id}"),
    ({"topic": [{"name": "x", "pattern": "m/{unit_id}", "format": "csv", "columns": ["unit", "time"],
                 "registers": {"kwh": 1}}]}, "kwh"),
    ({"topic": [{"name": "x", "pattern": "m/{unit_id}", "format": "xml", "registers": {"kwh": 1}}]}, "format"),
])
def test_a_bad_mapping_table_is_refused_naming_the_problem(bad: dict[str, Any], reason: str) -> None:
    with pytest.raises(MappingError, match=reason.replace("{", r"\{").replace("}", r"\}")):
        parse_mapping(bad)


def test_units_resolve_to_installed_logical_devices_by_serial_or_mac(catalog: Hub) -> None:
    register_unit(catalog, "LD-SERIAL", serial="SN-0001")
    register_unit(catalog, "LD-MAC", mac="0a:1b:2c:3d:4e:5f")
    assert catalog.units.ld_ids_of(["SN-0001", "0A1B2C3D4E5F", "0a-1b-2c-3d-4e-5f", "nobody"]) == {
        "SN-0001": "LD-SERIAL", "0A1B2C3D4E5F": "LD-MAC", "0a-1b-2c-3d-4e-5f": "LD-MAC"}
    assert catalog.units.ld_id_of("SN-0001", ld_address=3) is None  # no logical device at that address


def test_unit_lookups_are_cached_until_forgotten(catalog: Hub) -> None:
    assert catalog.units.ld_id_of("SN-LATE") is None
    register_unit(catalog, "LD-LATE", serial="SN-LATE")
    assert catalog.units.ld_id_of("SN-LATE") is None  # the miss is cached for ttl_seconds
    catalog.units.forget("SN-LATE")
    assert catalog.units.ld_id_of("SN-LATE") == "LD-LATE"


async def test_json_and_csv_readings_are_stored_as_utc_register_reads(units: Any, catalog: Hub) -> None:
    subscriber, recorder, publish = units
    register_unit(catalog, "LD-JSON", serial="SN-JSON")
    register_unit(catalog, "LD-CSV", mac="AA:BB:CC:00:11:22")
    await publish("meters/SN-JSON/energy", json.dumps({"unit": "SN-JSON", "time": TIME_JST, "kwh": 1234.5}))
    await publish("meters/AABBCC001122/energy/csv",
                  "unit,time,kwh\nAABBCC001122,2026-11-23T00:30:00Z,88.25\nAABBCC001122,2026-11-23T01:00:00Z,88.75\n")
    await eventually(lambda: len(recorder.reads) == 3, "three stored reads")
    assert sorted(recorder.reads, key=lambda r: (r.ld_id, r.measured_time)) == [
        RegisterRead("LD-CSV", 1, TIME_UTC, 88.25),
        RegisterRead("LD-CSV", 1, datetime(2026, 11, 23, 1, 0, tzinfo=UTC), 88.75),
        RegisterRead("LD-JSON", 1, TIME_UTC, 1234.5),
    ]
    assert all(r.measured_time.utcoffset() is not None and r.measured_time.tzinfo is UTC for r in recorder.reads)
    assert subscriber.stats == {"received": 2, "stored": 3, "unknown_unit": 0, "malformed": 0, "rejected": 0,
                                "failed": 0}


async def test_a_batch_of_readings_in_one_json_array_is_stored(units: Any, catalog: Hub) -> None:
    subscriber, recorder, publish = units
    register_unit(catalog, "LD-CATCHUP", serial="SN-CATCHUP")
    backlog = [{"time": f"2026-11-23T0{h}:00:00+00:00", "kwh": 10.0 + h} for h in range(5)]
    await publish("meters/SN-CATCHUP/energy", json.dumps(backlog))
    await eventually(lambda: len(recorder.reads) == 5, "the five readings of the backlog")
    assert [r.value for r in sorted(recorder.reads, key=lambda r: r.measured_time)] == [10, 11, 12, 13, 14]


async def test_malformed_payloads_are_counted_and_the_next_good_message_is_served(units: Any, catalog: Hub) -> None:
    subscriber, recorder, publish = units
    register_unit(catalog, "LD-GOOD", serial="SN-GOOD")
    bad = [
        b"\xff\xfe not text",
        "{not json",
        json.dumps(["a list", "of strings"]),
        json.dumps({"time": TIME_JST}),  # no kwh
        json.dumps({"time": TIME_JST, "kwh": "lots"}),
        json.dumps({"time": TIME_JST, "kwh": -1}),
        json.dumps({"time": TIME_JST, "kwh": True}),
        json.dumps({"unit": "SN-OTHER", "time": TIME_JST, "kwh": 1}),  # payload names another unit
        json.dumps({"time": "yesterday", "kwh": 1}),
    ]
    for payload in bad:
        await publish("meters/SN-GOOD/energy", payload)
    await publish("meters/SN-GOOD/energy/csv", "SN-GOOD,2026-11-23T00:30:00Z")  # a column short
    await publish("meters/SN-GOOD/energy", json.dumps({"time": TIME_JST, "kwh": 7.5}))
    await eventually(lambda: len(recorder.reads) == 1, "the good reading after the bad ones")
    assert recorder.reads == [RegisterRead("LD-GOOD", 1, TIME_UTC, 7.5)]
    assert subscriber.stats["malformed"] == len(bad) + 1
    assert subscriber.stats["received"] == len(bad) + 2
    assert subscriber.connected.is_set()


@pytest.mark.parametrize("when", [
    "2026-11-23T09:31:00+09:00",  # off the grid
    "2026-11-23T09:30:00.5+09:00",  # off the grid by half a second
    "2026-11-23T09:30:00+05:45",  # on the local half-hour, 15 minutes off the UTC grid
    "2026-11-23T09:30:00",  # naive: the unit's zone is unknown
])
async def test_off_grid_and_naive_times_are_refused(units: Any, catalog: Hub, when: str) -> None:
    subscriber, recorder, publish = units
    register_unit(catalog, "LD-CLOCK", serial="SN-CLOCK")
    await publish("meters/SN-CLOCK/energy", json.dumps({"time": when, "kwh": 1.0}))
    await publish("meters/SN-CLOCK/energy/csv", f"SN-CLOCK,{when},1.0")
    await eventually(lambda: subscriber.stats["malformed"] == 2, "both messages refused")
    await publish("meters/SN-CLOCK/energy", json.dumps({"time": "2026-11-23T09:30:00+05:30", "kwh": 2.0}))
    await eventually(lambda: len(recorder.reads) == 1, "the reading on the grid")
    assert recorder.reads == [RegisterRead("LD-CLOCK", 1, datetime(2026, 11, 23, 4, 0, tzinfo=UTC), 2.0)]


async def test_readings_from_unknown_units_are_not_stored_and_raise_one_alert(units: Any, catalog: Hub) -> None:
    subscriber, recorder, publish = units
    register_unit(catalog, "LD-KNOWN", serial="SN-KNOWN")
    await publish("meters/SN-STRANGER/energy", json.dumps({"time": TIME_JST, "kwh": 5.0}))
    await publish("meters/SN-STRANGER/energy", json.dumps({"time": "2026-11-23T01:00:00Z", "kwh": 5.5}))
    await publish("meters/SN-KNOWN/energy", json.dumps({"time": TIME_JST, "kwh": 3.0}))
    await eventually(lambda: subscriber.stats["unknown_unit"] == 2 and len(recorder.reads) == 1,
                     "the stranger's readings refused and the known one stored")
    assert recorder.reads == [RegisterRead("LD-KNOWN", 1, TIME_UTC, 3.0)]
    assert [unit for unit, _ in recorder.unknown] == ["SN-STRANGER"]  # one alert, not one per reading
    assert recorder.unknown[0][1][0].measured_time == TIME_UTC


async def test_a_failing_store_is_counted_and_does_not_stop_the_subscriber(catalog: Hub) -> None:
    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    register_unit(catalog, "LD-RETRY", serial="SN-RETRY")
    catalog.settings.mqtt = MqttSection(host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}",
                                        persistent_session=False, flush_seconds=0.05)
    stored: list[RegisterRead] = []

    async def flaky(reads: list[RegisterRead]) -> None:
        if not stored and reads[0].value == 1.0:
            stored.append(reads[0])  # remembered only to fail once
            raise RuntimeError("database went away")
        stored.extend(reads)

    mapping = parse_mapping({"topic": [{"name": "e", "pattern": f"{prefix}/{{unit_id}}", "format": "json",
                                        "registers": {"kwh": 1}}]})
    subscriber = build_subscriber(catalog, flaky, mapping=mapping)
    await subscriber.start()
    try:
        await asyncio.wait_for(subscriber.connected.wait(), 5)
        async with aiomqtt.Client(*BROKER) as publisher:
            await publisher.publish(f"{prefix}/SN-RETRY", json.dumps({"time": TIME_JST, "kwh": 1.0}), qos=1)
            await eventually(lambda: subscriber.stats["failed"] == 1, "the failed store counted")
            await publisher.publish(f"{prefix}/SN-RETRY", json.dumps({"time": TIME_JST, "kwh": 2.0}), qos=1)
            await eventually(lambda: subscriber.stats["stored"] == 1, "the next reading stored")
    finally:
        await subscriber.stop()
    assert stored[-1].value == 2.0


async def test_the_subscriber_keeps_retrying_an_unreachable_broker_until_stopped(catalog: Hub) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    catalog.settings.mqtt = MqttSection(host="127.0.0.1", port=port, reconnect_max_seconds=0.2)
    recorder = Recorder()
    subscriber = build_subscriber(catalog, recorder.ingest)
    await subscriber.start()
    await asyncio.sleep(0.8)  # several failed attempts with back-off
    assert not subscriber.connected.is_set()
    assert all(not task.done() for task in subscriber._tasks)  # still trying, not crashed
    await subscriber.stop()


async def test_readings_published_while_the_hub_is_away_arrive_when_it_returns(catalog: Hub) -> None:
    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    register_unit(catalog, "LD-AWAY", serial="SN-AWAY")
    catalog.settings.mqtt = MqttSection(host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}", flush_seconds=0.05)
    mapping = parse_mapping({"topic": [{"name": "e", "pattern": f"{prefix}/{{unit_id}}", "format": "json",
                                        "registers": {"kwh": 1}}]})
    recorder = Recorder()
    first = build_subscriber(catalog, recorder.ingest, mapping=mapping)
    await first.start()
    await asyncio.wait_for(first.connected.wait(), 5)
    await first.stop()  # the broker keeps the persistent session and queues QoS 1 messages for it
    async with aiomqtt.Client(*BROKER) as publisher:
        await publisher.publish(f"{prefix}/SN-AWAY", json.dumps({"time": TIME_JST, "kwh": 42.0}), qos=1)
    second = build_subscriber(catalog, recorder.ingest, mapping=mapping)
    await second.start()
    try:
        await eventually(lambda: len(recorder.reads) == 1, "the reading queued by the broker")
    finally:
        await second.stop()
        async with aiomqtt.Client(*BROKER, identifier=f"hub-{prefix}", clean_session=True):
            pass  # end the persistent session so the broker forgets it
    assert recorder.reads == [RegisterRead("LD-AWAY", 1, TIME_UTC, 42.0)]


async def test_the_subscriber_runs_with_the_application_when_enabled(catalog: Hub, aiohttp_client: Any,
                                                                     tmp_path: Any) -> None:
    from aiohttp import web

    from adapters.mqtt.lifecycle import MQTT_APP_KEY, setup_mqtt

    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    table = tmp_path / "units.toml"
    table.write_text(f'[[topic]]\nname = "site"\npattern = "{prefix}/{{unit_id}}/kwh"\nformat = "csv"\n'
                     'columns = ["time", "kwh"]\n[topic.registers]\nkwh = 1\n')
    register_unit(catalog, "LD-APP", serial="SN-APP")
    recorder = Recorder()
    disabled = web.Application()
    setup_mqtt(disabled, catalog, recorder.ingest)
    assert MQTT_APP_KEY not in disabled  # [mqtt] enabled is false by default

    catalog.settings.mqtt = MqttSection(enabled=True, host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}",
                                        persistent_session=False, mapping_file=table, flush_seconds=0.05)
    app = web.Application()
    setup_mqtt(app, catalog, recorder.ingest, recorder.on_unknown)
    client = await aiohttp_client(app)
    subscriber = app[MQTT_APP_KEY]
    await asyncio.wait_for(subscriber.connected.wait(), 5)
    assert subscriber.topic_filters == [f"{prefix}/+/kwh"]
    async with aiomqtt.Client(*BROKER) as publisher:
        await publisher.publish(f"{prefix}/SN-APP/kwh", "2026-11-23T00:30:00Z,9.5", qos=1)
        await eventually(lambda: len(recorder.reads) == 1, "the reading stored while the app runs")
    await client.close()
    assert not subscriber.connected.is_set()
    assert recorder.reads == [RegisterRead("LD-APP", 1, TIME_UTC, 9.5)]


async def test_pushed_readings_reach_the_usage_history_and_unknown_units_the_alert_history(
        catalog: Hub, aiohttp_client: Any, tmp_path: Any) -> None:
    """The wiring the hub runs with: collection's ingest (same path as polled reads) and alerts."""
    from aiohttp import web
    from sqlalchemy import select

    from adapters.mqtt.lifecycle import MQTT_APP_KEY, UNKNOWN_UNIT_CODE, install
    from hub.model import Alert, UsageHistory

    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    table = tmp_path / "units.toml"
    table.write_text(f'[[topic]]\nname = "e"\npattern = "{prefix}/{{unit_id}}"\nformat = "json"\n'
                     '[topic.registers]\nkwh = 1\n')
    register_unit(catalog, "LD-PUSHED", serial="SN-PUSHED")
    catalog.settings.mqtt = MqttSection(enabled=True, host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}",
                                        persistent_session=False, mapping_file=table, flush_seconds=0.05)
    app = web.Application()
    install(app, catalog)
    client = await aiohttp_client(app)
    subscriber = app[MQTT_APP_KEY]
    await asyncio.wait_for(subscriber.connected.wait(), 5)
    async with aiomqtt.Client(*BROKER) as publisher:
        for payload in ({"time": "2026-11-23T09:00:00+09:00", "kwh": 100.0}, {"time": TIME_JST, "kwh": 101.5},
                        {"time": TIME_JST, "kwh": 101.5}):  # the last one as a broker redelivery would be
            await publisher.publish(f"{prefix}/SN-PUSHED", json.dumps(payload), qos=1)
        await publisher.publish(f"{prefix}/SN-NOBODY", json.dumps({"time": TIME_JST, "kwh": 1.0}), qos=1)
        await eventually(lambda: subscriber.stats["stored"] == 3 and subscriber.stats["unknown_unit"] == 1,
                         "three stored reads and one unknown-unit reading")
    await client.close()
    with catalog.db.session() as s:
        rows = s.execute(select(UsageHistory.ld_id, UsageHistory.measured_time, UsageHistory.register_value,
                                UsageHistory.source).order_by(UsageHistory.ld_id, UsageHistory.measured_time)).all()
        alerts = s.scalars(select(Alert).where(Alert.code == UNKNOWN_UNIT_CODE)).all()
        alert_view = [(a.source, a.details["unit_id"], a.details["readings"]) for a in alerts]
    assert [(r[0], r[1], r[2], r[3]) for r in rows if r[2] is not None] == [
        ("LD-PUSHED", datetime(2026, 11, 23, 0, 0, tzinfo=UTC), 100.0, "mqtt"),
        ("LD-PUSHED", TIME_UTC, 101.5, "mqtt"),
    ]
    assert not any(r[0] == "SN-NOBODY" for r in rows)
    assert alert_view == [("mqtt", "SN-NOBODY", 1)]


async def test_an_unknown_unit_is_recorded_in_the_alert_history(catalog: Hub, aiohttp_client: Any,
                                                                tmp_path: Any) -> None:
    from aiohttp import web
    from sqlalchemy import select

    from adapters.mqtt.lifecycle import MQTT_APP_KEY, UNKNOWN_UNIT_CODE, alert_unknown_units, setup_mqtt
    from hub.model import Alert

    broker_up()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    table = tmp_path / "units.toml"
    table.write_text(f'[[topic]]\nname = "e"\npattern = "{prefix}/{{unit_id}}"\nformat = "json"\n'
                     '[topic.registers]\nkwh = 1\n')
    catalog.settings.mqtt = MqttSection(enabled=True, host=BROKER[0], port=BROKER[1], client_id=f"hub-{prefix}",
                                        persistent_session=False, mapping_file=table, flush_seconds=0.05)
    recorder = Recorder()
    app = web.Application()
    setup_mqtt(app, catalog, recorder.ingest, alert_unknown_units(catalog))
    client = await aiohttp_client(app)
    subscriber = app[MQTT_APP_KEY]
    await asyncio.wait_for(subscriber.connected.wait(), 5)
    async with aiomqtt.Client(*BROKER) as publisher:
        backlog = [{"time": when, "kwh": 1.0} for when in (TIME_JST, "2026-11-23T01:00:00Z")]
        await publisher.publish(f"{prefix}/SN-ROGUE", json.dumps(backlog), qos=1)
        await eventually(lambda: subscriber.stats["unknown_unit"] == 2, "both readings refused")
    await client.close()
    with catalog.db.session() as s:
        alerts = [(a.source, a.severity, a.ld_id, a.details) for a in
                  s.scalars(select(Alert).where(Alert.code == UNKNOWN_UNIT_CODE))]
    assert recorder.reads == []
    assert alerts == [("mqtt", "warning", None, {"unit_id": "SN-ROGUE", "readings": 2,
                                                 "first_time": "2026-11-23T00:30:00+00:00",
                                                 "last_time": "2026-11-23T01:00:00+00:00"})]
