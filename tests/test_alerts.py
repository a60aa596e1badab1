"""Alert history and the NMS link: alerts are stored set-based, listed with filters, reported by
other parts through the API, and reach real UDP and TCP syslog listeners as RFC 5424 messages; a
listener that is down never loses an alert, which goes out on the next resend."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.nms import SyslogNotifier
from hub.config import NmsSection
from hub.services.alerts import AlertFilter
from hub.services.diagnosis import AlertDraft, ItemRange, Reading, Thresholds, diagnose

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RFC5424 = re.compile(rb"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
                     rb"(?P<msgid>\S+) (?P<sd>-|\[(?:[^\]\\]|\\.)*\])(?: (?P<msg>.*))?$", re.S)
SD_PARAM = re.compile(r'(\S+?)="((?:[^"\\]|\\.)*)"')


def parse_syslog(raw: bytes) -> dict[str, Any]:
    """An RFC 5424 message split into its fields; structured data as {sd_id: {name: value}}."""
    m = RFC5424.match(raw)
    assert m, raw
    sd_text = m["sd"].decode()
    sd_id, _, params = sd_text[1:-1].partition(" ")
    msg = m["msg"] or b""
    assert msg.startswith(b"\xef\xbb\xbf"), "MSG is UTF-8 with a BOM"
    return {"pri": int(m["pri"]), "timestamp": m["timestamp"].decode(), "hostname": m["hostname"].decode(),
            "app": m["app"].decode(), "procid": m["procid"].decode(), "msgid": m["msgid"].decode(),
            "sd": {sd_id: {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(params)}},
            "msg": msg[3:].decode()}


class UdpListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]

    def receive(self) -> bytes:
        return self.sock.recvfrom(65535)[0]


class TcpListener:
    """Accepts connections and splits the stream into RFC 6587 octet-counted frames."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self.got = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while chunk := conn.recv(65536):
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        assert length.isdigit(), buffer
                        if len(rest) < int(length):
                            break
                        with self.got:
                            self.frames.append(rest[:int(length)])
                            self.got.notify_all()
                        buffer = rest[int(length):]

    def wait_for(self, count: int) -> list[bytes]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.frames) >= count, timeout=5), self.frames
            return list(self.frames)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def udp() -> Iterator[UdpListener]:
    listener = UdpListener()
    yield listener
    listener.sock.close()


@pytest.fixture
def tcp() -> Iterator[TcpListener]:
    listener = TcpListener()
    yield listener
    listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drafts_from_diagnosis() -> list[AlertDraft]:
    rows = [Reading("LD-A", 1, T0, 10.5, 0.5, "normal"), Reading("LD-A", 1, T0 + timedelta(minutes=30), 2.0, -8.5,
                                                                 "normal")]
    rows += [Reading("LD-B", 1, T0 + n * timedelta(minutes=30), None, None, "missing") for n in range(8)]
    rows += [Reading("LD-C", 2, T0, 500.0, None, "normal")]
    ranges = {"LD-C": {2: ItemRange(0, 200, "maximum")}}
    return diagnose(rows, Thresholds(), ranges)


def test_alerts_are_stored_in_draft_order_and_listed_with_filters(hub):
    drafts = drafts_from_diagnosis()
    assert [d.code for d in drafts] == ["reading.negative-increment", "reading.missing-run", "reading.out-of-range"]
    ids = hub.alerts.raise_alerts(drafts)
    assert len(ids) == 3 and ids == sorted(ids)
    old = AlertDraft(code="security.revoked-certificate", severity="critical", message="old meter tried to log in",
                     ld_id="LD-A", source="ALA", raised_at=T0 - timedelta(days=1))
    hub.alerts.raise_alerts([old])
    assert hub.alerts.raise_alerts([]) == []

    def listed(limit: int = 50, offset: int = 0, **filters: Any) -> tuple[list[str], int]:
        items, total = hub.alerts.list_alerts(AlertFilter(**filters), limit, offset)
        return [a["code"] for a in items], total

    codes, total = listed()
    assert total == 4 and codes[-1] == "security.revoked-certificate"   # newest first
    assert listed(code="reading.missing-run") == (["reading.missing-run"], 1)
    assert listed(ld_id="LD-A")[1] == 2
    assert listed(severity="critical") == (["security.revoked-certificate"], 1)
    assert listed(source="diagnosis")[1] == 3
    assert listed(since=T0)[1] == 3 and listed(until=T0)[1] == 1
    assert listed(limit=2, offset=3) == (["security.revoked-certificate"], 4)
    assert listed(sent=False)[1] == 4 and listed(sent=True)[1] == 0     # no NMS configured
    stored = hub.alerts.get(ids[1])
    assert stored["ld_id"] == "LD-B" and stored["severity"] == "error" and stored["source"] == "diagnosis"
    assert stored["details"]["slots"] == 8 and stored["nms_sent_at"] is None
    assert hub.alerts.resend_unsent() == 0


def test_ranges_come_from_the_parameter_group_of_each_installed_device(catalog):
    from hub.demo import demo_rows

    report = catalog.registry.import_json(demo_rows(3, seed=7), atomic=True)
    assert report.failed == 0, report
    ranges = catalog.alerts.load_ranges()
    assert set(ranges) == {"DEMO-LD-000001", "DEMO-LD-000002", "DEMO-LD-000003"}
    assert ranges["DEMO-LD-000001"][2] == ItemRange(0, 200, "maximum")
    assert ranges["DEMO-LD-000002"][1].kind == "cumulative"
    assert set(catalog.alerts.load_ranges(["DEMO-LD-000003", "UNKNOWN"])) == {"DEMO-LD-000003"}


def test_an_alert_reaches_a_udp_syslog_listener_as_rfc5424(hub, udp):
    hub.alerts.notifier = SyslogNotifier(port=udp.port, transport="udp", hostname="mdm-test", facility="local3")
    draft = AlertDraft(code="reading.zero-run", severity="warning", ld_id="LD-\"Q]", he_id=2,
                       message="LD-Q register 1: zero consumption for 13 slots — 連続ゼロ", raised_at=T0)
    (alert_id,) = hub.alerts.raise_alerts([draft])
    got = parse_syslog(udp.receive())
    assert got["pri"] == 19 * 8 + 4                                     # local3, warning
    assert got["timestamp"] == "2026-03-01T00:00:00.000000Z"
    assert (got["hostname"], got["app"], got["msgid"]) == ("mdm-test", "mdmhub", "reading.zero-run")
    assert got["sd"] == {"alert@32473": {"id": str(alert_id), "code": "reading.zero-run", "ld_id": 'LD-"Q]',
                                         "he_id": "2", "source": "diagnosis"}}
    assert got["msg"] == draft.message
    assert hub.alerts.get(alert_id)["nms_sent_at"] is not None


async def test_an_external_alert_posted_to_the_api_reaches_a_tcp_listener(hub, tcp, aiohttp_client):
    from hub.app import create_app

    hub.settings.nms = NmsSection(enabled=True, port=tcp.port, transport="tcp", facility="local0",
                                  app_name="mdm-core")
    client = await aiohttp_client(create_app(hub))
    body = {"source": "ALA", "code": "security.revoked-certificate", "severity": "critical", "ld_id": "LD-7",
            "message": "authentication with a revoked certificate", "details": {"serial": "2038111"},
            "raised_at": "2026-03-01T09:00:00+09:00"}
    resp = await client.post("/api/v1/alerts", json=body)
    assert resp.status == 201, await resp.text()
    stored = await resp.json()
    assert stored["source"] == "ALA" and stored["details"] == {"serial": "2038111"}
    assert stored["raised_at"].startswith("2026-03-01T00:00:00") and stored["nms_sent_at"] is not None
    second = await client.post("/api/v1/alerts", json={"source": "PROV", "code": "provisioning.failed",
                                                       "message": "no answer after reboot"})
    assert second.status == 201
    first_msg, second_msg = (parse_syslog(frame) for frame in tcp.wait_for(2))
    assert first_msg["pri"] == 16 * 8 + 2 and first_msg["app"] == "mdm-core"     # local0, critical
    assert first_msg["sd"]["alert@32473"] == {"id": str(stored["id"]), "code": "security.revoked-certificate",
                                              "ld_id": "LD-7", "source": "ALA"}
    assert second_msg["pri"] == 16 * 8 + 4 and "ld_id" not in second_msg["sd"]["alert@32473"]   # default warning
    listing = await (await client.get("/api/v1/alerts", params={"source": "ALA", "sent": "true"})).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == stored["id"]


async def test_the_api_refuses_bad_alerts_and_bad_filters(client):
    for bad in ({"source": "ALA", "code": "x", "message": "m", "severity": "loud"},
                {"source": "ALA", "code": "Has Spaces", "message": "m"},
                {"source": "ALA", "code": "x", "message": "m", "raised_at": "2026-03-01T00:00:00"},
                {"source": "ALA", "code": "x", "message": "m", "colour": "red"},
                {"code": "x", "message": "m"}):
        resp = await client.post("/api/v1/alerts", json=bad)
        assert resp.status == 422, (bad, await resp.text())
    for query in ({"severity": "loud"}, {"since": "yesterday"}, {"colour": "red"}, {"limit": "0"}):
        resp = await client.get("/api/v1/alerts", params=query)
        assert resp.status == 400, query
    assert (await (await client.get("/api/v1/alerts")).json()) == {"items": [], "total": 0}


def test_a_listener_that_is_down_leaves_alerts_stored_until_resend(hub):
    port = free_port()
    hub.alerts.notifier = SyslogNotifier(port=port, transport="tcp", timeout_seconds=1)
    ids = hub.alerts.raise_alerts(drafts_from_diagnosis())
    assert len(ids) == 3
    unsent, total = hub.alerts.list_alerts(AlertFilter(sent=False), 50, 0)
    assert total == 3 and all(a["nms_sent_at"] is None for a in unsent)
    assert hub.alerts.resend_unsent() == 0                              # still down
    listener = TcpListener(port)
    try:
        assert hub.alerts.resend_unsent() == 3
        frames = [parse_syslog(f) for f in listener.wait_for(3)]
        assert [int(f["sd"]["alert@32473"]["id"]) for f in frames] == ids     # oldest first
        assert hub.alerts.list_alerts(AlertFilter(sent=False), 50, 0)[1] == 0
        assert hub.alerts.resend_unsent() == 0
    finally:
        listener.close()


def test_a_notifier_that_raises_never_loses_the_alert(hub):
    class Broken:
        def deliver(self, alerts: Any) -> int:
            raise RuntimeError("NMS link exploded")

    hub.alerts.notifier = Broken()
    (alert_id,) = hub.alerts.raise_alerts([AlertDraft(code="reading.spike", severity="notice", message="m")])
    assert hub.alerts.get(alert_id)["nms_sent_at"] is None


def test_nms_settings_build_the_notifier():
    nms = NmsSection(enabled=True, host="nms.example", port=6514, transport="tcp", app_name="mdm", facility="local7")
    notifier = SyslogNotifier.from_settings(nms)
    assert (notifier.host, notifier.port, notifier.transport, notifier.facility) == ("nms.example", 6514, "tcp",
                                                                                   "local7")
    with pytest.raises(ValueError):
        NmsSection(transport="relp")
    with pytest.raises(ValueError):
        SyslogNotifier(facility="kern2")


async def test_the_running_app_resends_what_the_nms_missed(hub, aiohttp_client):
    import asyncio

    from hub.app import create_app

    port = free_port()
    hub.settings.nms = NmsSection(enabled=True, port=port, transport="tcp", resend_seconds=1, timeout_seconds=1)
    client = await aiohttp_client(create_app(hub))
    resp = await client.post("/api/v1/alerts", json={"source": "PROV", "code": "provisioning.failed",
                                                     "message": "no answer after reboot"})
    assert resp.status == 201 and (await resp.json())["nms_sent_at"] is None
    listener = TcpListener(port)
    try:
        frame = await asyncio.to_thread(listener.wait_for, 1)
        assert parse_syslog(frame[0])["msgid"] == "provisioning.failed"
        for _ in range(50):
            if (await (await client.get("/api/v1/alerts", params={"sent": "true"})).json())["total"] == 1:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the resent alert was never marked sent")
    finally:
        listener.close()
