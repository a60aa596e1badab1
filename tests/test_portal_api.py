"""Customer portal data API: registration from customer data, login without telling which part was
wrong, lock after repeated failures, temporary passwords that expire and must be changed, who may edit
an account, the account's own data only (usage per slot, day and month with charges and
reconciliation corrections, ADR history), and the seed's ADR policy rule for display terminals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from hub.db import utcnow
from hub.model import AdrAction, AdrEvent, CorrectionParameter, CustomerLogicalDevice, Customer, UsageHistory
from tests.collecting import SLOT, START
from tests.test_public_api import PERIOD, bearer, make_client, pclient, phub, clock, seed_usage  # noqa: F401

PASSWORD = "correct horse battery"


async def _account(hub, client, customer="C-LD-000003", user="alice@example.com", edit_rights=True):  # type: ignore[no-untyped-def]
    admin = make_client(hub, f"portal-backend-{user.split('@')[0]}", ["portal:admin"])
    resp = await client.post("/api/v1/portal/accounts", headers=bearer(admin), json={
        "customer_id": customer, "user_id": user, "password": PASSWORD, "edit_rights": edit_rights})
    assert resp.status == 201, await resp.text()
    return admin


async def _login(client, user="alice@example.com", password=PASSWORD):  # type: ignore[no-untyped-def]
    return await client.post("/api/v1/portal/login", json={"user_id": user, "password": password})


async def test_login_failures_are_generic_and_lock_the_account(phub, clock, pclient):
    await seed_usage(phub, clock)
    await _account(phub, pclient)
    unknown = await (await _login(pclient, user="nobody@example.com")).json()
    wrong = await (await _login(pclient, password="wrong password")).json()
    assert unknown["detail"] == wrong["detail"] and PASSWORD not in str(wrong)
    for _ in range(4):
        await _login(pclient, password="wrong password")
    assert (await _login(pclient)).status == 401  # 5 failures: locked even with the right password


async def test_temporary_password_expires_and_must_be_changed(phub, clock, pclient):
    await seed_usage(phub, clock)
    admin = await _account(phub, pclient)
    temp = (await (await pclient.post("/api/v1/portal/accounts/alice@example.com/temporary-password",
                                      headers=bearer(admin))).json())["temporary_password"]
    assert (await _login(pclient)).status == 401  # the old password no longer works
    session = await (await _login(pclient, password=temp)).json()
    assert session["must_change_password"] is True
    assert (await pclient.get("/api/v1/portal/usage", params=PERIOD, headers=bearer(session["token"]))).status == 403
    resp = await pclient.post("/api/v1/portal/password", headers=bearer(session["token"]),
                              json={"current_password": temp, "new_password": "a brand new secret"})
    assert resp.status == 204
    fresh = await (await _login(pclient, password="a brand new secret")).json()
    assert (await pclient.get("/api/v1/portal/usage", params=PERIOD, headers=bearer(fresh["token"]))).status == 200
    temp2 = (await (await pclient.post("/api/v1/portal/accounts/alice@example.com/temporary-password",
                                       headers=bearer(admin))).json())["temporary_password"]
    real = phub.access.clock
    phub.access.clock = lambda: real() + timedelta(hours=25)
    assert (await _login(pclient, password=temp2)).status == 401


async def test_an_account_sees_only_its_own_metering_points(phub, clock, pclient):
    await seed_usage(phub, clock)
    await _account(phub, pclient)
    token = (await (await _login(pclient)).json())["token"]
    body = await (await pclient.get("/api/v1/portal/usage", params={**PERIOD, "resolution": "day"},
                                    headers=bearer(token))).json()
    assert {i["ld_id"] for i in body["items"]} == {"LD-000003"}
    other = await pclient.post("/api/v1/portal/policies", headers=bearer(token),
                               json={"ld_id": "LD-000004", "reduced_amps": 10})
    assert other.status == 403


async def test_a_display_terminal_may_add_and_deactivate_policies_only(phub, clock, pclient):
    await seed_usage(phub, clock)
    await _account(phub, pclient)
    token = (await (await _login(pclient)).json())["token"]
    term = await (await pclient.post("/api/v1/portal/terminals", headers=bearer(token),
                                     json={"terminal_id": "VPA-1", "name": "living room"})).json()
    tkey = term["key"]
    added = await pclient.post("/api/v1/portal/policies", headers=bearer(tkey),
                               json={"ld_id": "LD-000003", "reduced_amps": 20})
    assert added.status == 201
    pid = (await added.json())["policy_id"]
    url = f"/api/v1/portal/policies/{pid}"
    assert (await pclient.patch(url, headers=bearer(tkey), json={"reduced_amps": 10})).status == 403
    assert (await pclient.delete(url, headers=bearer(tkey))).status == 403
    assert (await pclient.patch(url, headers=bearer(tkey), json={"active": False})).status == 200
    assert (await pclient.patch(url, headers=bearer(tkey), json={"active": True})).status == 403
    assert (await pclient.patch(url, headers=bearer(token), json={"active": True, "reduced_amps": 15})).status == 200
    assert (await pclient.delete(url, headers=bearer(token))).status == 204
    assert (await pclient.delete("/api/v1/portal/terminals/VPA-1", headers=bearer(token))).status == 204
    assert (await pclient.get("/api/v1/portal/policies", headers=bearer(tkey))).status == 401
    assert utcnow()


async def _token(client, user="alice@example.com", password=PASSWORD) -> str:  # type: ignore[no-untyped-def]
    resp = await _login(client, user, password)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["token"]


async def test_who_may_edit_an_account(phub, clock, pclient):
    """The account edits its own user ID when it has edit rights, never its rights or state; the portal
    back end (portal:admin) edits user ID, rights and state; nobody else edits anything."""
    await seed_usage(phub, clock)
    admin = await _account(phub, pclient)
    await _account(phub, pclient, customer="C-LD-000004", user="bob@example.com", edit_rights=False)
    alice, bob = await _token(pclient), await _token(pclient, "bob@example.com")
    me = "/api/v1/portal/me"
    for field, value in (("edit_rights", True), ("state", "active"), ("customer_id", "C-LD-000004")):
        resp = await pclient.patch(me, headers=bearer(alice), json={field: value})
        assert resp.status == 422, field
    assert (await pclient.patch(me, headers=bearer(alice), json={"user_id": "bob@example.com"})).status == 409
    assert (await pclient.patch(me, headers=bearer(bob), json={"user_id": "robert@example.com"})).status == 403
    assert (await pclient.post("/api/v1/portal/policies", headers=bearer(bob),
                               json={"ld_id": "LD-000004", "reduced_amps": 10})).status == 403
    assert (await pclient.post("/api/v1/portal/terminals", headers=bearer(bob),
                               json={"terminal_id": "VPA-B"})).status == 403
    assert (await (await pclient.get(me, headers=bearer(bob))).json())["logical_devices"] == ["LD-000004"]
    terminal = (await (await pclient.post("/api/v1/portal/terminals", headers=bearer(alice),
                                          json={"terminal_id": "VPA-A"})).json())["key"]
    assert (await pclient.patch(me, headers=bearer(terminal), json={"user_id": "x@example.com"})).status == 403
    # nobody but portal:admin edits other accounts, not even an account with edit rights
    public = make_client(phub, "signage", ["public:read"])
    for who in (alice, terminal, public):
        resp = await pclient.patch("/api/v1/portal/accounts/bob@example.com", headers=bearer(who),
                                   json={"edit_rights": True})
        assert resp.status == 403
    renamed = await pclient.patch(me, headers=bearer(alice), json={"user_id": "alice.new@example.com"})
    assert renamed.status == 200 and (await renamed.json())["user_id"] == "alice.new@example.com"
    assert (await _login(pclient)).status == 401 and (await _login(pclient, "alice.new@example.com")).status == 200
    # the back end grants rights, disables (every login ends) and re-enables
    acct = "/api/v1/portal/accounts/bob@example.com"
    granted = await pclient.patch(acct, headers=bearer(admin), json={"edit_rights": True})
    assert granted.status == 200 and (await granted.json())["edit_rights"] is True
    assert (await pclient.patch(me, headers=bearer(bob), json={"user_id": "robert@example.com"})).status == 200
    acct = "/api/v1/portal/accounts/robert@example.com"
    assert (await pclient.patch(acct, headers=bearer(admin), json={"state": "locked"})).status == 422
    assert (await pclient.patch(acct, headers=bearer(admin), json={"state": "disabled"})).status == 200
    assert (await pclient.get(me, headers=bearer(bob))).status == 401
    assert (await _login(pclient, "robert@example.com")).status == 401
    assert (await pclient.patch(acct, headers=bearer(admin), json={"state": "active"})).status == 200
    assert (await _login(pclient, "robert@example.com")).status == 200
    assert (await pclient.patch("/api/v1/portal/accounts/nobody@example.com", headers=bearer(admin),
                                json={"edit_rights": True})).status == 404


async def test_adr_history_shows_the_accounts_events_and_actions_only(phub, clock, pclient):
    """Events that touched the account's points, with only the actions on those points, only while the
    points were the account's; a display terminal reads the same history."""
    await seed_usage(phub, clock)
    moved = START + 6 * SLOT  # LD-000003 passes from C-LD-000003 to a new customer
    with phub.db.session() as s:
        s.execute(update(CustomerLogicalDevice).where(CustomerLogicalDevice.ld_id == "LD-000003")
                  .values(valid_to=moved))
        s.add(Customer(customer_id="C-NEW", name="Next Tenant"))
        s.flush()
        s.add(CustomerLogicalDevice(customer_id="C-NEW", ld_id="LD-000003", valid_from=moved))
        events = {}
        for n, (eid, at) in enumerate((("EV-1", START + SLOT), ("EV-2", START + 2 * SLOT), ("EV-3", moved + SLOT))):
            ev = AdrEvent(vtn_id="vtn", event_id=eid, dtstart=at, duration_seconds=1800, signals=[])
            s.add(ev)
            s.flush()
            events[eid] = ev.id
        s.add_all([
            AdrAction(adr_event_id=events["EV-1"], ld_id="LD-000003", directed_at=START + SLOT, state="done",
                      reduced_amps=20, restore_amps=30, start_at=START + SLOT, end_at=START + 2 * SLOT),
            AdrAction(adr_event_id=events["EV-1"], ld_id="LD-000004", directed_at=START + SLOT, state="done",
                      reduced_amps=10, restore_amps=30),
            AdrAction(adr_event_id=events["EV-2"], ld_id="LD-000004", directed_at=START + 2 * SLOT, state="failed"),
            AdrAction(adr_event_id=events["EV-3"], ld_id="LD-000003", directed_at=moved + SLOT, state="done",
                      reduced_amps=15, restore_amps=30),
        ])
    await _account(phub, pclient)
    await _account(phub, pclient, customer="C-NEW", user="next@example.com")
    alice = await _token(pclient)
    url = "/api/v1/portal/adr-history"
    body = await (await pclient.get(url, headers=bearer(alice))).json()
    assert [(e["event_id"], [(a["ld_id"], a["state"], a["reduced_amps"]) for a in e["actions"]])
            for e in body["items"]] == [("EV-1", [("LD-000003", "done", 20)])]
    ev = body["items"][0]
    assert ev["start"] == "2026-03-02T00:30:00Z" and ev["actions"][0]["end_at"] == "2026-03-02T01:00:00Z"
    assert "LD-000004" not in str(body)
    window = {"from": (START + 2 * SLOT).isoformat(), "to": (START + 10 * SLOT).isoformat()}
    assert (await (await pclient.get(url, params=window, headers=bearer(alice))).json())["items"] == []
    terminal = (await (await pclient.post("/api/v1/portal/terminals", headers=bearer(alice),
                                          json={"terminal_id": "VPA-A"})).json())["key"]
    assert (await (await pclient.get(url, headers=bearer(terminal))).json()) == body
    nxt = await (await pclient.get(url, headers=bearer(await _token(pclient, "next@example.com")))).json()
    assert [(e["event_id"], len(e["actions"])) for e in nxt["items"]] == [("EV-3", 1)]


def _slot(local: str) -> datetime:
    """A slot end given in the portal's time zone (Asia/Tokyo)."""
    return datetime.fromisoformat(local + "+09:00").astimezone(UTC)


async def test_days_and_months_hold_the_slots_that_start_in_them(phub, clock, pclient):
    """The slot ending at local midnight is the last of its day and month: it counts there (as in the
    day's delivery file), not in the next one."""
    await seed_usage(phub, clock)
    ends = {"2026-01-31T23:30": 1.0, "2026-02-01T00:00": 2.0, "2026-02-01T00:30": 4.0, "2026-02-28T23:30": 8.0,
            "2026-03-01T00:00": 16.0, "2026-03-01T00:30": 32.0}
    with phub.db.session() as s:
        for local, kwh in ends.items():
            s.add(UsageHistory(ld_id="LD-000003", sub_number=1, measured_time=_slot(local), increment=kwh,
                               status="normal"))
    await _account(phub, pclient)
    alice = await _token(pclient)
    period = {"from": "2026-01-01T00:00:00+09:00", "to": "2026-03-01T00:00:00+09:00"}
    months = await (await pclient.get("/api/v1/portal/usage", params={**period, "resolution": "month"},
                                      headers=bearer(alice))).json()
    assert [(i["period_start"], i["energy_kwh"], i["slots"]) for i in months["items"]] == [
        ("2026-01", 3.0, 2), ("2026-02", 28.0, 3)]  # 00:30 of March 1 is March's; 00:00 is February's
    days = await (await pclient.get("/api/v1/portal/usage", params={
        "from": "2026-01-31T00:00:00+09:00", "to": "2026-02-02T00:00:00+09:00", "resolution": "day"},
        headers=bearer(alice))).json()
    assert [(i["period_start"], i["energy_kwh"]) for i in days["items"]] == [("2026-01-31", 3.0),
                                                                              ("2026-02-01", 4.0)]
    slots = await (await pclient.get("/api/v1/portal/usage", params={
        "from": "2026-01-31T23:30:00+09:00", "to": "2026-02-01T00:30:00+09:00"}, headers=bearer(alice))).json()
    assert [i["period_start"] for i in slots["items"]] == ["2026-01-31T15:00:00Z", "2026-01-31T15:30:00Z"]


async def test_charges_and_reconciliation_corrections_are_in_the_visual_history(phub, clock, pclient):
    """003 §2.4.7: a slot reconciled by billing (here a missing one that was never re-collected) shows
    the corrected energy and charge, flagged ``corrected``, in the slot, the day and the month."""
    await seed_usage(phub, clock)
    with phub.db.session() as s:
        s.add(CorrectionParameter(param_id="global", valid_from=START - timedelta(days=30), unit_price=30.0))
        gap = START + SLOT
        row = s.get(UsageHistory, ("LD-000003", 1, gap))
        row.increment, row.status = None, "missing"
    phub.billing.simulate(START - SLOT, START + 4 * SLOT)
    phub.billing.correct("LD-000003", 1, gap, increment=0.75, estimated_charge=22.5, reason="reconciliation")
    await _account(phub, pclient)
    alice = await _token(pclient)
    slots = (await (await pclient.get("/api/v1/portal/usage", params=PERIOD, headers=bearer(alice))).json())["items"]
    by_time = {i["period_start"]: i for i in slots}
    fixed = by_time["2026-03-02T00:30:00Z"]
    assert (fixed["energy_kwh"], fixed["billed_kwh"], fixed["estimated_charge"], fixed["corrected"],
            fixed["missing"]) == (0.75, 0.75, 22.5, True, 0)
    first, later = by_time["2026-03-02T00:00:00Z"], by_time["2026-03-02T01:00:00Z"]
    assert first["energy_kwh"] is None and first["estimated_charge"] is None  # a first reading has no increment
    assert not first["corrected"] and not later["corrected"]
    assert later["billed_kwh"] == later["energy_kwh"] > 0  # priced by pseudo-billing: energy x unit price
    assert later["estimated_charge"] == round(later["energy_kwh"] * 30.0, 6)
    total, charge = round(0.75 + later["energy_kwh"], 6), round(22.5 + later["estimated_charge"], 6)
    for resolution in ("day", "month"):
        items = (await (await pclient.get("/api/v1/portal/usage", params={**PERIOD, "resolution": resolution},
                                          headers=bearer(alice))).json())["items"]
        assert len(items) == 1 and items[0]["corrected"] is True, resolution
        assert (items[0]["energy_kwh"], items[0]["estimated_charge"]) == (total, charge)
