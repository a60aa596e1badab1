"""One-pass MeterReadings documents are parsed and taken apart in a worker process while the
request's thread stores: the replies are the same as inline, and a worker that dies mid-message
fails that message cleanly (nothing stored, not remembered as taken) and the next one gets a new
worker."""

from __future__ import annotations

import os
import signal

import pytest

from adapters.cim import parse_worker, readings, stream
from hub.app import create_app
from tests.cim_messages import details, meter_readings, parse_reply, result
from tests.collecting import install_meters
from tests.test_cim_stream import SNAPSHOT, created, day, post, stored

METERS = 40


@pytest.fixture
def lds(hub):
    return install_meters(hub, {1: METERS})


@pytest.fixture
async def cim(hub, lds, aiohttp_client):
    return await aiohttp_client(create_app(hub))


@pytest.fixture
def pool(monkeypatch):
    """A pool of one worker of this test's own, small batches so a message takes many."""
    workers = parse_worker.ParseWorkers(1)
    monkeypatch.setattr(parse_worker, "POOL", workers)
    monkeypatch.setattr(stream, "SINGLE_PASS_METERS", 2)
    monkeypatch.setattr(readings, "PIPELINE_METERS", 2)
    yield workers
    workers.close()


def _day_message(lds, message_id: str, copies: int = 1) -> tuple[dict, bytes]:
    """A day of every meter; with ``copies``, each MeterReading sent that many times over (a long
    document that stores what one copy stores)."""
    values = day(lds)
    payload = meter_readings(values, code=SNAPSHOT, interval=True)
    head, rest = payload.split("<m:MeterReading>", 1)
    body = "<m:MeterReading>" + rest.removesuffix("</m:MeterReadings>")
    return values, created(head + body * copies + "</m:MeterReadings>", message_id=message_id)


def _stored_as_sent(hub, lds, values) -> bool:
    rows = stored(hub, lds)
    return all([v for _, v, _ in rows[ld]] == [v for _, v in values[ld]] for ld in lds)


@pytest.mark.parametrize("size", [0, 1])
async def test_inline_and_worker_reads_store_the_same(cim, hub, lds, pool, monkeypatch, size):
    monkeypatch.setattr(pool, "size", size)
    values, body = _day_message(lds, "day-1")
    reply = parse_reply(await post(cim, body))
    assert result(reply) == "OK", details(reply)
    assert _stored_as_sent(hub, lds, values)
    assert len(pool.pids()) == size


async def test_a_worker_killed_mid_message_fails_it_cleanly_and_the_next_message_gets_a_new_one(
        cim, hub, lds, pool, monkeypatch):
    values, body = _day_message(lds, "day-1", copies=25)  # 1,000 MeterReadings: read for a while
    ingest = hub.collection.ingest_values
    killed: list[int] = []

    def kill_then_ingest(*args, **kwargs):
        if not killed:  # the first batch is being stored: the worker is still reading the rest
            for pid in pool.pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return ingest(*args, **kwargs)

    monkeypatch.setattr(hub.collection, "ingest_values", kill_then_ingest)
    reply = parse_reply(await post(cim, body))
    assert killed
    assert result(reply) == "FAILED"
    assert any("could not process" in d for d in details(reply)), details(reply)
    assert all(not rows for rows in stored(hub, lds).values())  # rolled back: nothing of it stored

    monkeypatch.setattr(hub.collection, "ingest_values", ingest)
    reply = parse_reply(await post(cim, body))  # the same MessageID: not remembered as taken
    assert result(reply) == "OK", details(reply)
    assert _stored_as_sent(hub, lds, values)
    assert pool.pids() and not set(pool.pids()) & set(killed)


async def test_an_idle_worker_that_died_is_replaced(cim, hub, lds, pool):
    values, body = _day_message(lds, "day-1")
    assert result(parse_reply(await post(cim, body))) == "OK"
    [pid] = pool.pids()
    os.kill(pid, signal.SIGKILL)
    [idle] = pool._idle
    idle.process.join(10)
    values2, body2 = _day_message(lds, "day-2")
    reply = parse_reply(await post(cim, body2))
    assert result(reply) == "OK", details(reply)
    assert pool.pids() and pid not in pool.pids()


async def test_a_schema_violation_late_in_a_worker_read_refuses_everything(cim, hub, lds, pool):
    values, body = _day_message(lds, "day-1")
    cut = body.rindex(b"<m:value>")
    bad = body[:cut] + b"<m:unheard/>" + body[cut:]
    reply = parse_reply(await post(cim, bad))
    assert result(reply) == "FAILED"
    assert any("unheard" in d for d in details(reply)), details(reply)
    assert all(not rows for rows in stored(hub, lds).values())
    assert len(pool.pids()) == 1  # a refusal is a clean end: the worker is kept


async def test_a_message_that_finds_every_worker_taken_is_read_inline_without_waiting(cim, hub, lds, pool):
    assert pool.claim()  # another message holds the only worker
    try:
        values, body = _day_message(lds, "day-1")
        reply = parse_reply(await post(cim, body))
        assert result(reply) == "OK", details(reply)
        assert _stored_as_sent(hub, lds, values)
        assert pool.pids() == []  # never started: read inline
    finally:
        pool.release()
