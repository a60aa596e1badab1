"""The IEEE 1888 point registry: REST listing and registration, mapping files, writer allow-lists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hub.runtime import Hub
from hub.services.errors import InvalidInput
from hub.services.fiap_store import ForbiddenPoints, Sample
from hub.services.points import Caller, PointIn

ROOT = Path(__file__).resolve().parents[1]
P = "http://example.org/site/1F/power"


async def test_rest_registers_and_lists_points(client) -> None:  # type: ignore[no-untyped-def]
    body = {"points": [{"point_id": P, "kind": "power", "unit": "kW", "name": "1F power"},
                       {"point_id": "http://example.org/site/1F/temperature", "kind": "temperature"}]}
    r = await client.post("/api/v1/fiap/points", json=body)
    assert r.status == 200 and await r.json() == {"registered": 2, "updated": 0}
    r = await client.post("/api/v1/fiap/points", json={"points": [{**body["points"][0], "unit": "W"}]})
    assert await r.json() == {"registered": 0, "updated": 1}
    r = await client.get("/api/v1/fiap/points", params={"prefix": "http://example.org/site/1F/p"})
    data = await r.json()
    assert data["total"] == 1 and data["items"][0] == {
        "point_id": P, "kind": "power", "unit": "W", "name": "1F power", "ld_id": None, "sub_number": None,
        "numeric": True}
    bad = await client.post("/api/v1/fiap/points", json={"points": [{"point_id": "no scheme", "kind": "power"},
                                                                    {"point_id": P, "kind": "smell"}]})
    assert bad.status == 422 and bad.content_type == "application/problem+json"
    half = await client.post("/api/v1/fiap/points", json={"points": [{"point_id": P, "kind": "energy",
                                                                      "ld_id": "LD-1"}]})
    assert half.status == 422  # ld_id without sub_number


def test_mapping_file_registers_the_demo_site_and_a_bad_file_registers_nothing(hub: Hub, tmp_path: Path) -> None:
    report = hub.fiap.points.load_mapping(ROOT / "mappings" / "ieee1888_points.toml")
    assert report == {"registered": 13, "updated": 0, "writers": 0, "readers": 0}
    bad = tmp_path / "bad.toml"
    bad.write_text('[[point]]\npoint_id = "http://x/ok"\nkind = "power"\n[[point]]\npoint_id = "http://x/y"\n')
    with pytest.raises(InvalidInput):
        hub.fiap.points.load_mapping(bad)
    assert hub.fiap.points.resolve(["http://x/ok"]) == {}


def test_writer_allow_lists_decide_who_writes_which_points(hub: Hub, tmp_path: Path) -> None:
    mapping = tmp_path / "site.toml"
    digest = hashlib.sha256(b"s3cret").hexdigest()
    mapping.write_text(f'''
[[point]]
point_id = "{P}"
kind = "power"
[[point]]
point_id = "http://example.org/other/power"
kind = "power"
[[writer]]
name = "gw1"
password_sha256 = "{digest}"
points = ["http://example.org/site/*"]
[[writer]]
name = "lan"
addresses = ["10.1.0.0/16"]
points = ["http://example.org/other/*"]
''')
    hub.fiap.points.load_mapping(mapping)
    store = hub.fiap.store
    sample = [Sample(P, None, "1.5")]
    assert store.write(sample, Caller("gw1", "s3cret", "192.0.2.1")).stored == 1
    for caller in (Caller("gw1", "wrong", "192.0.2.1"), Caller(None, None, "192.0.2.1"), Caller(None, None, "10.1.2.3")):
        with pytest.raises(ForbiddenPoints):
            store.write([Sample(P, None, "2.5")], caller)
    assert store.write([Sample("http://example.org/other/power", None, "3")], Caller(None, None, "10.1.2.3")).stored == 1
    assert store.write([Sample(P, None, "4")], None).stored == 1  # the hub itself (fetched values)
