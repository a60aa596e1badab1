"""Daily CSV delivery: a file per customer and day, fetched with the client's key, checksums in the
manifest and headers that match the bytes, other customers' files refused, retention purge."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

from tests.test_public_api import bearer, make_client, pclient, phub, clock, seed_usage  # noqa: F401


async def test_a_customer_file_is_fetched_with_matching_checksums_and_others_are_refused(phub, clock, pclient):
    await seed_usage(phub, clock)
    day = date(2026, 3, 2)
    phub.delivery.clock = lambda: clock.now + timedelta(days=2)
    key = make_client(phub, "retailer", ["delivery:read"], customer_ids=["C-LD-000003"])
    resp = await pclient.get(f"/api/v1/public/delivery/customer/C-LD-000003/{day}.csv", headers=bearer(key))
    assert resp.status == 200, await resp.text()
    data = await resp.read()
    digest = hashlib.sha256(data).hexdigest()
    assert resp.headers["X-Checksum-SHA256"] == digest
    lines = data.decode().splitlines()
    assert lines[0] == "customer_id,ld_id,slot_end,energy_kwh,status" and "LD-000003" in lines[1]
    manifest = await (await pclient.get("/api/v1/public/delivery/manifest", headers=bearer(key))).json()
    assert [(f["path"], f["sha256"]) for f in manifest["files"]] == [(f"customer/C-LD-000003/{day}.csv", digest)]
    other = await pclient.get(f"/api/v1/public/delivery/customer/C-LD-000004/{day}.csv", headers=bearer(key))
    assert other.status == 403
    trav = await pclient.get(f"/api/v1/public/delivery/customer/..%2F..%2Fetc/{day}.csv", headers=bearer(key))
    assert trav.status in (403, 404)
    phub.delivery.clock = lambda: clock.now + timedelta(days=60)
    assert phub.delivery.purge() == 1


async def test_the_daily_run_writes_for_every_customer_and_group_what_a_single_fetch_would(phub, clock):
    await seed_usage(phub, clock)  # includes two customers holding two points each
    day = date(2026, 3, 2)
    phub.delivery.clock = lambda: clock.now + timedelta(days=2)
    phub.delivery.put_group("district", "district office", ["C-SMALL-0", "C-SMALL-1", "C-NOBODY"])
    made = phub.delivery.generate_day(day)
    written = {(m["kind"], m["subject"]): (phub.delivery.root / m["path"]).read_bytes() for m in made}
    assert ("group", "district") in written and ("customer", "C-SMALL-0") in written
    assert len([k for k in written if k[0] == "customer"]) == 10  # 12 points, two pairs share a customer
    for (kind, subject), data in written.items():
        assert data == (phub.delivery.root / phub.delivery.generate(kind, subject, day)["path"]).read_bytes(), subject
    assert written[("group", "district")].count(b"\r\n") == 1 + 4 * 3  # the header, 4 points x 3 slots
    assert phub.delivery.generate_day(day, missing_only=True) == []
