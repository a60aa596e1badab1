"""Customer portal data API: registration from customer data, login without telling which part was
wrong, lock after repeated failures, temporary passwords that expire and must be changed, the
account's own data only, and the seed's ADR policy rule for display terminals."""

from __future__ import annotations

from datetime import timedelta

from hub.db import utcnow
from tests.test_public_api import PERIOD, bearer, make_client, pclient, phub, clock, seed_usage  # noqa: F401

PASSWORD = "correct horse battery"


async def _account(hub, client, customer="C-LD-000003", user="alice@example.com"):  # type: ignore[no-untyped-def]
    admin = make_client(hub, "portal-backend", ["portal:admin"])
    resp = await client.post("/api/v1/portal/accounts", headers=bearer(admin),
                             json={"customer_id": customer, "user_id": user, "password": PASSWORD})
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
