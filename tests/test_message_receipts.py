"""The replay memory of inbound messages: the first copy is acted on, later copies get its reply,
and that holds across hub instances sharing a store (a restart, or a second process)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from hub.db import Database
from hub.services.message_receipts import MessageReceiptService


def test_the_first_copy_is_acted_on_and_later_copies_get_its_reply(hub) -> None:
    receipts = MessageReceiptService(hub.db)
    assert receipts.claim("cim", "billing", "m-1").first
    receipts.record_reply("cim", "billing", "m-1", "<reply>one</reply>")
    again = receipts.claim("cim", "billing", "m-1")
    assert not again.first and again.reply == "<reply>one</reply>"


def test_the_same_message_id_from_another_sender_or_edge_is_another_message(hub) -> None:
    receipts = MessageReceiptService(hub.db)
    assert receipts.claim("cim", "billing", "m-1").first
    assert receipts.claim("cim", "outage", "m-1").first
    assert receipts.claim("fiap", "billing", "m-1").first


def test_a_copy_arriving_while_the_first_is_in_hand_is_not_acted_on(hub) -> None:
    receipts = MessageReceiptService(hub.db)
    assert receipts.claim("cim", "billing", "m-2").first
    copy = receipts.claim("cim", "billing", "m-2")
    assert not copy.first and copy.reply is None and copy.received_at is not None


def test_the_memory_survives_a_restart(hub, settings) -> None:
    MessageReceiptService(hub.db).claim("cim", "billing", "m-3")
    MessageReceiptService(hub.db).record_reply("cim", "billing", "m-3", "<r/>")
    other = Database.from_url(settings.database_url)
    try:
        assert MessageReceiptService(other).claim("cim", "billing", "m-3").reply == "<r/>"
    finally:
        other.dispose()


def test_of_copies_racing_in_exactly_one_is_first(hub) -> None:
    receipts = MessageReceiptService(hub.db)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: receipts.claim("cim", "billing", "m-race"), range(16)))
    assert sum(c.first for c in claims) == 1


def test_very_long_ids_are_kept_apart(hub) -> None:
    receipts = MessageReceiptService(hub.db)
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert receipts.claim("cim", "s" * 400, a).first
    assert receipts.claim("cim", "s" * 400, b).first
    assert not receipts.claim("cim", "s" * 400, a).first


def test_receipts_past_retention_are_purged(hub) -> None:
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    receipts = MessageReceiptService(hub.db, retention=timedelta(days=7), clock=lambda: now[0])
    receipts.claim("cim", "billing", "old")
    now[0] += timedelta(days=8)
    assert receipts.claim("cim", "billing", "new").first  # purges on the way
    assert receipts.claim("cim", "billing", "old").first
