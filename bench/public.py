"""The secondary-use REST API over real HTTP, against a hub started with ``mdmhub serve`` in a child
process.

Store (untimed): the fleet of N meters registered with ``mdmhub devices import`` (three clusters),
one customer per metering point, and one local day of 30-minute usage of every meter (N x 48 rows,
about 0.4 % missing) generated set-based in the store, then ``stores.settle``.

(a) Cluster aggregate, the issue's case: ``GET /api/v1/public/usage`` for one local day (Asia/Tokyo),
``group_by=cluster``, ``resolution=slot``, over all N meters' data (3 clusters x 48 slots), timed one
request at a time; p50 against the target (< 200 ms). The rows were loaded past the writer, so the
first request finds the day not rolled up and rolls it up (reported on its own, as "first request");
the timed ones read the rollup as they do after collection, which keeps it fresh slot by slot. The one-cluster variant (``group=``) is
reported beside it. Baseline, same server: ``GET /health`` (an HTTP round trip through the same
stack with one trivial query), so the ratio is the aggregate's own cost.

(b) Load: C concurrent clients (default 100) for D seconds (default 60), each a loop of mixed public
queries (day and slot aggregates of one cluster or all, quality summary, DR events, groups, the SOAP
``GetUsageAggregate`` of one cluster). Throughput, p50/p99 and errors; the client's rate limit is set
above what the run can reach, and 429s would be counted separately as throttled.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, create_engine, text

from bench.fleet import CLUSTERS, Fleet, write_csv
from bench.harness import Measure, Run, percentiles
from bench.ieee1888 import Server
from bench.registration import import_devices, prepare_store
from bench.stores import settle
from hub.db import UTCDateTime

TZ = ZoneInfo("Asia/Tokyo")
DAY = datetime(2026, 1, 6, tzinfo=TZ)  # a local day: its slots end 00:30 ... 24:00 local
SLOTS = 48
AGGREGATE_TARGET_MS = 200.0
AGGREGATE_REQUESTS = 30
AGGREGATE_BUDGET_S = 90.0  # fewer requests (at least 3) when they are slow
HEALTH_REQUESTS = 100


def _engine(url: str) -> Any:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def generate_customers_and_day(url: str, meters: int) -> float:
    """One customer per metering point and one local day of usage of every meter; the seconds taken."""
    engine = _engine(url)
    sqlite = engine.dialect.name == "sqlite"
    series = ("WITH RECURSIVE m(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM m WHERE i < :n) "
              "SELECT printf('LD%010d', i) AS ld, printf('CU%010d', i) AS cu, i FROM m") if sqlite else \
             ("SELECT 'LD' || lpad(i::text, 10, '0') AS ld, 'CU' || lpad(i::text, 10, '0') AS cu, i "
              "FROM generate_series(1, :n) AS g(i)")
    usage = text(
        "INSERT INTO usage_history (ld_id, sub_number, measured_time, register_value, increment, status, "
        "quality, source, updated_at) "
        "SELECT ld, 1, :t, CASE WHEN miss THEN NULL ELSE 1000 + (i % 500) + :slot * 0.25 END, "
        "CASE WHEN miss THEN NULL ELSE 0.25 + (i % 7) * 0.05 END, "
        "CASE WHEN miss THEN 'missing' ELSE 'normal' END, CASE WHEN miss THEN 2 ELSE 1 END, 'bench', :t "
        f"FROM (SELECT ld, i, ((i + :slot * 13) % 250 = 0) AS miss FROM ({series}) AS src) AS g"
    ).bindparams(bindparam("t", type_=UTCDateTime))
    now = datetime.now(UTC)
    started = time.perf_counter()
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO customer (customer_id, name, deleted, created_at) "
                              f"SELECT cu, 'customer ' || i, false, :now FROM ({series}) AS src")
                         .bindparams(bindparam("now", type_=UTCDateTime)), {"n": meters, "now": now})
            conn.execute(text(f"INSERT INTO customer_logical_device (customer_id, ld_id, deleted) "
                              f"SELECT cu, ld, false FROM ({series}) AS src"), {"n": meters})
        for slot in range(SLOTS):
            t = (DAY + (slot + 1) * timedelta(minutes=30)).astimezone(UTC)
            with engine.begin() as conn:
                conn.execute(usage, {"n": meters, "slot": slot, "t": t})
    finally:
        engine.dispose()
    return time.perf_counter() - started


def make_key(url: str) -> str:
    """An API client for the run: public:read, a rate limit above anything the run reaches."""
    from hub.config import Settings
    from hub.runtime import Hub
    from hub.services.access import ClientIn

    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        return hub.access.create_client(ClientIn(client_id="bench-public", scopes=["public:read"],
                                                 rate_per_minute=1_000_000))["key"]
    finally:
        hub.close()


def _period() -> dict[str, str]:
    return {"from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat()}


async def time_requests(base: str, path: str, params: dict[str, str], headers: dict[str, str],
                        count: int, check: Any = None, budget_s: float | None = None) -> list[float]:
    """Up to ``count`` sequential GETs (fewer, but at least 3, once ``budget_s`` is spent); each one's
    latency in seconds (a non-200 answer fails the run)."""
    import aiohttp

    lat: list[float] = []
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        for _ in range(count):
            if budget_s is not None and len(lat) >= 3 and time.perf_counter() - started > budget_s:
                break
            t0 = time.perf_counter()
            async with s.get(base + path, params=params) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: {r.status} {body[:300]!r}")
            lat.append(time.perf_counter() - t0)
            if check is not None:
                check(body)
    return lat


def _check_aggregate(groups: int) -> Any:
    import json

    def check(body: bytes) -> None:
        doc = json.loads(body)
        if doc["total"] != groups * SLOTS or doc["suppressed"]:
            raise RuntimeError(f"expected {groups * SLOTS} buckets, got {doc['total']} ({doc['suppressed']} suppressed)")
    return check


def _soap_body(cluster: str) -> bytes:
    start, end = DAY.astimezone(UTC), (DAY + timedelta(days=1)).astimezone(UTC)
    return ('<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:p="urn:mdmhub:public:1"><s:Body><p:GetUsageAggregate>'
            f"<p:From>{start.isoformat()}</p:From><p:To>{end.isoformat()}</p:To><p:Group>{cluster}</p:Group>"
            "<p:Limit>1000</p:Limit></p:GetUsageAggregate></s:Body></s:Envelope>").encode()


def mixed_requests() -> list[tuple[str, str, dict[str, str]]]:
    """The load's mix: (kind, path, params); SOAP requests have the path /public/soap."""
    period = _period()
    mix: list[tuple[str, str, dict[str, str]]] = []
    for cluster in CLUSTERS:
        mix += [("usage day, one cluster", "/api/v1/public/usage", {**period, "group": cluster, "resolution": "day"}),
                ("usage slots, one cluster", "/api/v1/public/usage", {**period, "group": cluster, "limit": "100"}),
                ("SOAP usage slots, one cluster", "/public/soap", {"cluster": cluster})]
    mix += [("usage slots, all clusters", "/api/v1/public/usage", {**period, "limit": "1000"}),
            ("quality, all clusters", "/api/v1/public/quality", period),
            ("DR events", "/api/v1/public/dr-events", period),
            ("groups", "/api/v1/public/groups", {})]
    return mix


async def load(base: str, key: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent loops over the mix for ``seconds``; latencies and outcomes per kind."""
    import aiohttp

    mix = mixed_requests()
    lat: list[float] = []
    by_kind: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    throttled = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(n: int, s: Any) -> None:
        nonlocal throttled
        rng = random.Random(n)
        while time.perf_counter() < deadline:
            kind, path, params = rng.choice(mix)
            t0 = time.perf_counter()
            try:
                if path == "/public/soap":
                    req = s.post(base + path, data=_soap_body(params["cluster"]),
                                 headers={"Content-Type": "text/xml; charset=utf-8"})
                else:
                    req = s.get(base + path, params=params)
                async with req as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            took = time.perf_counter() - t0
            if status == 429:
                throttled += 1
            elif status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            else:
                lat.append(took)
                by_kind.setdefault(kind, []).append(took)

    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as s:
        await asyncio.gather(*(client(n, s) for n in range(clients)))
    wall = time.perf_counter() - started
    return {"wall_s": wall, "ok": len(lat), "latencies": lat, "errors": errors, "throttled": throttled,
            "by_kind": {k: {"requests": len(v), **{p: round(x * 1000, 1) for p, x in percentiles(v).items()}}
                        for k, v in sorted(by_kind.items())}}


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_public(run: Run, backend: str, url: str, meters: int, workdir: Path, clients: int = 100,
                 seconds: float = 60.0) -> None:
    """Fill the store, serve it, time the cluster aggregate and the concurrent load."""
    fleet = Fleet(meters)
    prepare_store(url, fleet)
    import_devices(url, write_csv(workdir / "public-fleet.csv", fleet), workdir)
    gen_s = generate_customers_and_day(url, meters)
    settle(url)
    key = make_key(url)
    headers = {"Authorization": f"Bearer {key}"}
    server = Server(url, workdir)
    details: dict[str, Any] = {"meters": meters, "usage_rows": meters * SLOTS, "generate_s": round(gen_s, 1)}
    try:
        asyncio.run(server.ready())
        period = _period()
        name = f"public usage aggregate, one day x 30 min of {meters:,} meters"
        health = asyncio.run(time_requests(server.base, "/health", {}, {}, HEALTH_REQUESTS))
        base_p50 = percentiles(health)["p50"]
        load_before = _load_average()
        # the day's rows were loaded in bulk, past the writer: the first request rolls the day up
        cold = asyncio.run(time_requests(server.base, "/api/v1/public/usage", {**period, "limit": "1000"},
                                         headers, 1, _check_aggregate(len(CLUSTERS))))
        run.add(Measure(name + ", all 3 clusters, first request (rolls up the day's 48 slots)", backend,
                        "latency", cold[0] * 1000, "ms"))
        everything = asyncio.run(time_requests(server.base, "/api/v1/public/usage", {**period, "limit": "1000"},
                                               headers, AGGREGATE_REQUESTS, _check_aggregate(len(CLUSTERS)),
                                               AGGREGATE_BUDGET_S))
        one = asyncio.run(time_requests(server.base, "/api/v1/public/usage",
                                        {**period, "group": CLUSTERS[0], "limit": "1000"}, headers,
                                        AGGREGATE_REQUESTS, _check_aggregate(1), AGGREGATE_BUDGET_S))
        p_all, p_one = percentiles(everything), percentiles(one)
        run.add(Measure(name + ", all 3 clusters", backend, "p50", p_all["p50"] * 1000, "ms",
                        base_p50 * 1000, "GET /health", f"< {AGGREGATE_TARGET_MS:.0f} ms",
                        p_all["p50"] * 1000 < AGGREGATE_TARGET_MS))
        run.add(Measure(name + ", all 3 clusters", backend, "p99", p_all["p99"] * 1000, "ms",
                        percentiles(health)["p99"] * 1000, "GET /health"))
        run.add(Measure(name + f", one cluster ({meters // len(CLUSTERS):,} meters)", backend, "p50",
                        p_one["p50"] * 1000, "ms", base_p50 * 1000, "GET /health",
                        f"< {AGGREGATE_TARGET_MS:.0f} ms", p_one["p50"] * 1000 < AGGREGATE_TARGET_MS))
        details["aggregate_requests"] = {"all": len(everything), "one": len(one)}
        details["aggregate_ms"] = {"all": {k: round(v * 1000, 1) for k, v in p_all.items()},
                                   "one": {k: round(v * 1000, 1) for k, v in p_one.items()},
                                   "health": {k: round(v * 1000, 2) for k, v in percentiles(health).items()},
                                   "load_average_before": load_before}
        print(f"[{backend}] aggregate: {details['aggregate_ms']}", file=sys.stderr, flush=True)
        result = asyncio.run(load(server.base, key, clients, seconds))
        lname = f"public API load, {clients} clients x {seconds:.0f} s, mixed REST and SOAP"
        errors = sum(result["errors"].values())
        run.add(Measure(lname, backend, "throughput", result["ok"] / result["wall_s"], "requests/s"))
        if result["latencies"]:  # none when every request failed
            pl = percentiles(result["latencies"])
            run.add(Measure(lname, backend, "p50", pl["p50"] * 1000, "ms"))
            run.add(Measure(lname, backend, "p99", pl["p99"] * 1000, "ms"))
        run.add(Measure(lname, backend, "errors", errors, "requests", target="0", met=errors == 0))
        run.add(Measure(lname, backend, "throttled (429)", result["throttled"], "requests"))
        details["load"] = {k: v for k, v in result.items() if k != "latencies"} | {
            "load_average_after": _load_average()}
        print(f"[{backend}] load: {details['load']}", file=sys.stderr, flush=True)
    finally:
        child = server.stop()
        details["server_peak_rss_mib"] = round(child.peak_rss_mib, 1)
        details["server_cpu_s"] = round(child.cpu_s, 1)
        run.details.setdefault("public", {})[backend] = details
