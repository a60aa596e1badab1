"""The operations dashboard: its JSON from a hub fed by the real head-end simulator, the login gate,
and the page itself rendered by a real headless Chromium that signs in, finds the numbers the API
gives and saves a screenshot (test-output/dashboard-<backend>.png)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete, select, update

from hub.model import AdrAction, AdrEvent, Alert, LogicalDevice, UsageHistory
from hub.runtime import Hub
from hub.services.access import ClientIn
from tests.collecting import SLOT, START, Clock, collecting_hub, install_meters

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
XSS = '<img src=x onerror="document.body.dataset.pwned=1">'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dhub(settings, clock) -> Iterator[Hub]:  # type: ignore[no-untyped-def]
    hub = collecting_hub(settings, clock)
    yield hub
    hub.close()


async def seed(hub: Hub, clock: Clock) -> dict[str, Any]:
    """10 meters collected for 3 slots today; two past same weekdays (lower 0.1, upper 0.3 kWh per
    meter and slot); one meter disposed, one never seen, one silent for two days; an alert whose
    message is markup; a DR event with three actions."""
    lds = sorted(install_meters(hub, {1: 10}))
    for n in range(3):
        clock.now = START + n * SLOT + timedelta(minutes=1)
        await hub.collection.collect(1, START + n * SLOT)
    disposed, never, silent = lds[0], lds[1], lds[2]
    with hub.db.session() as s:
        s.execute(update(LogicalDevice).where(LogicalDevice.ld_id == disposed).values(deleted=True))
        s.execute(delete(UsageHistory).where(UsageHistory.ld_id.in_([never, silent])))
        s.add(UsageHistory(ld_id=silent, sub_number=1, measured_time=START - timedelta(days=2), register_value=1.0,
                           increment=0.2))
        for weeks, per_meter in ((1, 0.1), (2, 0.3)):
            for n in range(1, 4):
                for ld in (x for x in lds if x != never):
                    s.add(UsageHistory(ld_id=ld, sub_number=1, measured_time=START - timedelta(weeks=weeks) + n * SLOT,
                                       register_value=float(n), increment=per_meter))
        s.add(Alert(raised_at=START + SLOT, source="test", severity="critical", code="tamper", message=XSS,
                    ld_id=lds[3], he_id=1))
        ev = AdrEvent(vtn_id="vtn", event_id="EV-DASH", dtstart=START + SLOT, duration_seconds=3600, status="active")
        s.add(ev)
        s.flush()
        for n, state in enumerate(("done", "done", "failed")):
            s.add(AdrAction(adr_event_id=ev.id, ld_id=lds[4 + n], reduced_amps=20, restore_amps=30, state=state))
        today = s.execute(select(UsageHistory.increment).where(
            UsageHistory.sub_number == 1, UsageHistory.measured_time > START - timedelta(hours=9))).scalars().all()
    return {"lds": lds, "total": round(sum(v or 0 for v in today), 6)}


def key_for(hub: Hub, scopes: list[str], client_id: str = "ops") -> str:
    return hub.access.create_client(ClientIn(client_id=client_id, scopes=scopes))["key"]


@pytest.fixture
async def dclient(dhub, aiohttp_client):  # type: ignore[no-untyped-def]
    from hub.app import create_app

    return await aiohttp_client(create_app(dhub))


async def test_overview_counts_meters_by_state_and_band_collection_alerts_and_events(dhub, clock, dclient):
    seeded = await seed(dhub, clock)
    key = key_for(dhub, ["ops:read"])
    resp = await dclient.get("/api/v1/dashboard/overview", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["meters"] == {"communicating": 7, "never_seen": 1, "not_communicating": 1, "disposed": 1, "total": 10}
    energy = body["energy_today"]
    assert energy["day"] == "2026-03-02" and len(energy["slots"]) == 48
    assert energy["total_kwh"] == pytest.approx(seeded["total"]) and energy["total_kwh"] > 0
    # 09:00 JST is START: the slot ending 09:30 is the 19th of the local day
    first = energy["slots"][18]
    assert first["slot_end"] == (START + SLOT).isoformat().replace("+00:00", "Z")
    assert first["lower_kwh"] == pytest.approx(0.9) and first["upper_kwh"] == pytest.approx(2.7)
    assert first["energy_kwh"] is not None and energy["slots"][30]["energy_kwh"] is None
    he = next(h for h in body["collection"] if h["he_id"] == 1)
    assert he["he_id"] == 1 and he["expected_24h"] > 0 and 0 <= he["missing_rate"] <= 1
    assert body["alerts"][0]["message"] == XSS and body["alerts"][0]["code"] == "tamper"
    (event,) = body["dr_events"]
    assert event["event_id"] == "EV-DASH" and event["actions"] == 3 and event["actions_by_state"] == {"done": 2, "failed": 1}


async def test_the_figures_need_the_ops_scope_and_every_attempt_is_logged(dhub, dclient):
    url = "/api/v1/dashboard/overview"
    assert (await dclient.get(url)).status == 401
    other = key_for(dhub, ["public:read"], "signage")
    assert (await dclient.get(url, headers={"Authorization": f"Bearer {other}"})).status == 403
    page = await dclient.get("/dashboard")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    html = await page.text()
    assert "Content-Security-Policy" in page.headers and "http://" not in html.replace("http://www.w3.org", "")
    assert "https://" not in html  # no CDN: everything the page needs is in it
    rows, total = await dhub.run(dhub.access.log_rows, _LogQ(), 100, 0)
    assert [r["result"] for r in rows if r["edge"] == "dashboard"].count(401) == 1


def _LogQ():  # type: ignore[no-untyped-def]
    from hub.services.access import AccessLogQuery

    return AccessLogQuery()


# --- the page in a real headless Chromium, driven over the DevTools protocol ---------------------
class Browser:
    """A headless Chromium (Debian's package) and one page, driven over the DevTools WebSocket."""

    def __init__(self) -> None:
        assert CHROMIUM, "the chromium package is required (apt-get install chromium)"
        self.profile = tempfile.mkdtemp(prefix="mdmhub-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1280,1000", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ids = 0

    async def open(self) -> None:
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            target = next(t for t in await resp.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        await self.ws.send_json({"id": self.ids, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.ids:
                assert "error" not in msg, msg
                return msg["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        for _ in range(int(timeout / 0.1)):
            if value := await self.js(expression):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    async def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            await self.ws.close()
            await self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


async def test_chromium_signs_in_and_shows_the_numbers_the_api_gives(dhub, clock, dclient):
    await seed(dhub, clock)
    key = key_for(dhub, ["ops:read"])
    api = await (await dclient.get("/api/v1/dashboard/overview", headers={"Authorization": f"Bearer {key}"})).json()
    base = f"http://127.0.0.1:{dclient.server.port}"
    browser = Browser()
    try:
        await browser.open()
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=base + "/dashboard")
        await browser.wait_for("document.readyState === 'complete' && !!document.getElementById('login-form')")
        # a wrong key is refused and the board stays hidden
        await browser.js("document.getElementById('key').value = 'mdk_nobody.wrong';"
                         "document.getElementById('login-button').click()")
        assert "refused" in await browser.wait_for("document.getElementById('login-error').textContent")
        assert await browser.js("document.getElementById('board').classList.contains('hidden')")
        await browser.js(f"document.getElementById('key').value = {json.dumps(key)};"
                         "document.getElementById('login-button').click()")
        await browser.wait_for("document.body.dataset.loaded === 'true'")
        for state in ("communicating", "never_seen", "not_communicating", "disposed"):
            shown = await browser.js(f"document.querySelector('#meters-{state} b').textContent")
            assert shown == str(api["meters"][state]), state
        assert float(await browser.js("document.getElementById('energy-total').dataset.kwh")) == \
            pytest.approx(api["energy_today"]["total_kwh"])
        assert await browser.js("!!document.getElementById('today-line') && !!document.getElementById('band')")
        he = api["collection"][0]
        row = await browser.js(f"document.getElementById('he-{he['he_id']}').textContent")
        assert f"{he['missing_24h']} / {he['expected_24h']}" in row
        # the alert's markup is shown as text, never run
        alert_id = api["alerts"][0]["id"]
        assert XSS in await browser.js(f"document.getElementById('alert-{alert_id}').textContent")
        assert await browser.js("document.body.dataset.pwned === undefined && !document.querySelector('#alerts img')")
        assert "EV-DASH" in await browser.js("document.getElementById('events').textContent")
        shot = await browser.call("Page.captureScreenshot", format="png")
        OUTPUT.mkdir(exist_ok=True)
        import base64

        backend = dhub.db.backend
        (OUTPUT / f"dashboard-{backend}.png").write_bytes(base64.b64decode(shot["data"]))
        assert (OUTPUT / f"dashboard-{backend}.png").stat().st_size > 10_000
    finally:
        await browser.close()
