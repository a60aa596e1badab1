"""IEC 61968-9 over real HTTP (``POST /cim/messages``) against a hub started with ``mdmhub serve`` in a
child process (so its peak RSS is the server's own).

Ingest: one day of 30-minute register snapshots for N meters (80,000: 3.84 M interval readings) as a
head-end publishes them: ``created MeterReadings`` EventMessages of 1,000 meters each (48,000
IntervalReadings, about 5 MB), ``Property MessageIndex = k/N``, ``AckRequired``, one ReadingQuality
per thousand readings. They are written to files beforehand (untimed) and POSTed one at a time, each
after the previous acknowledgement, as a head-end waits for the ack. Timed from the first request to
the last reply; every reply must be ``OK`` and every reading must then be in ``usage_history``. The hub
replies after the message's transaction commits, so the last reply is when the last reading is stored.
Baseline, same run, same files: bare ``lxml.etree.fromstring`` of each file's bytes.

get: ``get MeterReadings`` for one meter and one month (31 days of 30-minute IntervalBlocks, ReadingType
the 30-minute delta) for a random one of the meters that hold a month of history (loaded untimed
before the server starts), and the same without a ReadingType (registers too); baseline ``GET
/health``. The three kinds are interleaved over one keep-alive connection, one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree
from sqlalchemy import create_engine, text

from bench.fleet import Fleet, ld_id, write_csv
from bench.harness import Measure, Run, percentiles
from bench.ieee1888 import Server
from bench.registration import import_devices, prepare_store
from bench.stores import settle

METERS = 80_000
SLOTS = 48
MESSAGE_METERS = 1_000
INGEST_TARGET = 50_000.0
RSS_TARGET_MIB = 1024.0
P50_TARGET_MS, P99_TARGET_MS = 20.0, 50.0
HISTORY_METERS = 50
ROUNDS, WARMUP = 500, 50
DAY = datetime(2026, 3, 2, tzinfo=UTC)
MONTH = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
SLOT = timedelta(minutes=30)
SNAPSHOT = "0.0.5.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"
DELTA = "0.0.5.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0"
MSG = "http://iec.ch/TC57/2011/schema/message"
MR = "http://iec.ch/TC57/2011/MeterReadings#"
GMR = "http://iec.ch/TC57/2011/GetMeterReadings#"
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# the messages ------------------------------------------------------------------------------------

def register_value(n: int, slot: int) -> float:
    """Meter n's energy register at the day's slot ``slot`` (a plausible, meter-specific advance)."""
    return 1000 + (n % 997) + slot * (0.05 + (n % 13) * 0.02)


def ingest_message(first: int, last: int, index: int, parts: int) -> bytes:
    """``created MeterReadings`` of meters ``first``..``last``: one IntervalBlock of 48 snapshots each."""
    stamps = [_iso(DAY + s * SLOT) for s in range(SLOTS)]
    quality = '<m:ReadingQualities><m:ReadingQualityType ref="3.8.0"/></m:ReadingQualities>'
    out = [f'<?xml version="1.0" encoding="UTF-8"?><EventMessage xmlns="{MSG}"><Header><Verb>created</Verb>'
           f"<Noun>MeterReadings</Noun><Timestamp>{_iso(DAY + timedelta(days=1, minutes=20))}</Timestamp>"
           f"<Source>HES-BENCH</Source><AckRequired>true</AckRequired><MessageID>{uuid.uuid4()}</MessageID>"
           f"<Property><Name>MessageIndex</Name><Value>{index}/{parts}</Value></Property></Header>"
           f'<Payload><m:MeterReadings xmlns:m="{MR}">']
    for n in range(first, last + 1):
        out.append("<m:MeterReading><m:IntervalBlocks>")
        for s, stamp in enumerate(stamps):
            q = quality if (n * SLOTS + s) % 1000 == 7 else ""
            out.append(f"<m:IntervalReadings><m:timeStamp>{stamp}</m:timeStamp>"
                       f"<m:value>{register_value(n, s):.3f}</m:value>{q}</m:IntervalReadings>")
        out.append(f'<m:ReadingType ref="{SNAPSHOT}"/></m:IntervalBlocks>'
                   f"<m:UsagePoint><m:mRID>{ld_id(n)}</m:mRID></m:UsagePoint></m:MeterReading>")
    out.append("</m:MeterReadings></Payload></EventMessage>")
    return "".join(out).encode()


def write_messages(meters: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = -(-meters // MESSAGE_METERS)
    files = []
    for k in range(parts):
        first = k * MESSAGE_METERS + 1
        path = folder / f"created-{k + 1:04d}.xml"
        path.write_bytes(ingest_message(first, min(meters, first + MESSAGE_METERS - 1), k + 1, parts))
        files.append(path)
    return files


def get_request(ld: str, types: tuple[str, ...]) -> bytes:
    sel = "".join(f"<g:ReadingType><g:mRID>{t}</g:mRID></g:ReadingType>" for t in types)
    return (f'<?xml version="1.0" encoding="UTF-8"?><RequestMessage xmlns="{MSG}"><Header><Verb>get</Verb>'
            f"<Noun>MeterReadings</Noun><Source>ERP-BENCH</Source><MessageID>{uuid.uuid4()}</MessageID></Header>"
            f"<Request><StartTime>{_iso(MONTH[0])}</StartTime><EndTime>{_iso(MONTH[1])}</EndTime>"
            f'<g:GetMeterReadings xmlns:g="{GMR}">{sel}<g:UsagePoint><g:mRID>{ld}</g:mRID></g:UsagePoint>'
            "</g:GetMeterReadings></Request></RequestMessage>").encode()


# set-up ------------------------------------------------------------------------------------------

def prepare(url: str, meters: int, workdir: Path) -> None:
    """Registered, installed meters (the registration benchmark's way), and a month of history for
    the first HISTORY_METERS of them stored through the collection service (untimed)."""
    from hub.config import Settings
    from hub.ports import RegisterRead
    from hub.runtime import Hub

    fleet = Fleet(meters)
    prepare_store(url, fleet)
    import_devices(url, write_csv(workdir / f"cim-registration-{meters}.csv", fleet), workdir)
    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        slots = int((MONTH[1] - MONTH[0]) / SLOT)
        for n in range(1, min(meters, HISTORY_METERS) + 1):
            reads = [RegisterRead(ld_id(n), 1, MONTH[0] + s * SLOT, 500 + s * 0.2) for s in range(slots)]
            report = hub.collection.ingest_reads(reads, "bench")
            if report["rejected"]:
                raise RuntimeError(f"history refused: {report['rejected'][:3]}")
    finally:
        hub.close()
    settle(url)


# the client side ---------------------------------------------------------------------------------

def _result(body: bytes) -> str:
    root = etree.fromstring(body)
    return root.findtext(f"{{{MSG}}}Reply/{{{MSG}}}Result") or ""


async def drive_ingest(base: str, files: list[Path]) -> tuple[float, list[float]]:
    import aiohttp

    lat = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        started = time.perf_counter()
        for path in files:
            body = path.read_bytes()
            t0 = time.perf_counter()
            async with s.post(f"{base}/cim/messages", data=body, headers={"Content-Type": "application/xml"}) as r:
                answer = await r.read()
            lat.append(time.perf_counter() - t0)
            if r.status != 200 or _result(answer) != "OK":
                raise RuntimeError(f"{path.name}: HTTP {r.status}: {answer[:1500]!r}")
        return time.perf_counter() - started, lat


async def drive_get(base: str, history: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    import aiohttp

    rng = random.Random(619689)
    kinds = {"health": None, "intervals": (DELTA,), "all types": ()}
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    slots = int((MONTH[1] - MONTH[0]) / SLOT)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        for n in range(warmup + rounds):
            ld = ld_id(rng.randint(1, history))
            for kind, types in kinds.items():
                t0 = time.perf_counter()
                if types is None:
                    async with s.get(f"{base}/health") as r:
                        body = await r.read()
                else:
                    async with s.post(f"{base}/cim/messages", data=get_request(ld, types),
                                      headers={"Content-Type": "application/xml"}) as r:
                        body = await r.read()
                elapsed = time.perf_counter() - t0
                if r.status != 200:
                    raise RuntimeError(f"{kind}: HTTP {r.status}: {body[:500]!r}")
                if types is not None and (n == 0 or b"<msg:Result>OK</msg:Result>" not in body):
                    root = etree.fromstring(body)
                    got = len(root.findall(f".//{{{MR}}}IntervalReadings"))
                    if _result(body) != "OK" or got != slots:
                        raise RuntimeError(f"{kind} of {ld}: {got} IntervalReadings, expected {slots}: {body[:800]!r}")
                if n >= warmup:
                    lat[kind].append(elapsed)
    return lat


# baseline and checks -----------------------------------------------------------------------------

def baseline_parse(files: list[Path]) -> float:
    """Seconds lxml takes to parse every file's bytes into a tree (bytes read outside the timer)."""
    total = 0.0
    for path in files:
        data = path.read_bytes()
        t0 = time.perf_counter()
        root = etree.fromstring(data)
        total += time.perf_counter() - t0
        del root
    return total


def stored_day(url: str, backend: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    lo, hi = DAY, DAY + timedelta(days=1)
    if backend == "sqlite":
        lo, hi = (t.replace(tzinfo=None).strftime(_SQLITE_TIME) for t in (lo, hi))  # type: ignore[assignment]
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM usage_history WHERE sub_number = 1 AND "
                                         "measured_time >= :lo AND measured_time < :hi"), {"lo": lo, "hi": hi})
                       .scalar_one())
    finally:
        engine.dispose()


# the benchmark -----------------------------------------------------------------------------------

def bench_cim(run: Run, backend: str, url: str, workdir: Path, *, meters: int = METERS, rounds: int = ROUNDS) -> None:
    """Ingest then get, each against its own server process, then the lxml baseline."""
    prepare(url, meters, workdir)
    files = write_messages(meters, workdir / f"cim-{backend}")
    expected = meters * SLOTS
    name = "IEC 61968-9 (HTTP /cim/messages)"
    try:
        server = Server(url, workdir)
        try:
            asyncio.run(server.ready())
            ingest_s, ingest_lat = asyncio.run(drive_ingest(server.base, files))
        finally:
            ichild = server.stop()
        stored = stored_day(url, backend)
        if stored != expected:
            raise RuntimeError(f"ingest stored {stored} of {expected} readings: {ichild.stderr[-2000:]}")
        parse_s = baseline_parse(files)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
    finally:
        for p in files:
            p.unlink(missing_ok=True)
    rate = expected / ingest_s
    run.add(Measure(name, backend, f"ingest created MeterReadings: {meters:,} meters x {SLOTS} in messages of "
                    f"{MESSAGE_METERS:,} meters", rate, "readings/s", expected / parse_s, "lxml parse of the files",
                    f">= {INGEST_TARGET:,.0f} readings/s", rate >= INGEST_TARGET))
    ip = percentiles(ingest_lat)
    run.add(Measure(name, backend, f"ingest: p99 of one message ({len(files)} messages)", ip["p99"] * 1000, "ms"))
    run.add(Measure(name, backend, "ingest: server peak RSS", ichild.peak_rss_mib, "MiB",
                    target=f"< {RSS_TARGET_MIB:.0f} MiB", met=ichild.peak_rss_mib < RSS_TARGET_MIB))

    settle(url)
    server = Server(url, workdir)
    try:
        asyncio.run(server.ready())
        lat = asyncio.run(drive_get(server.base, min(meters, HISTORY_METERS), rounds, WARMUP))
    finally:
        gchild = server.stop()
    health = percentiles(lat["health"])
    got = {k: percentiles(v) for k, v in lat.items()}
    days = (MONTH[1] - MONTH[0]).days
    for kind, target_p50 in (("intervals", True), ("all types", False)):
        p = got[kind]
        label = f"get MeterReadings, one meter, {days} days ({kind})"
        run.add(Measure(name, backend, f"{label}: p50", p["p50"] * 1000, "ms", health["p50"] * 1000, "GET /health",
                        f"< {P50_TARGET_MS:.0f} ms" if target_p50 else None,
                        p["p50"] * 1000 < P50_TARGET_MS if target_p50 else None))
        run.add(Measure(name, backend, f"{label}: p99", p["p99"] * 1000, "ms", health["p99"] * 1000, "GET /health",
                        f"< {P99_TARGET_MS:.0f} ms" if target_p50 else None,
                        p["p99"] * 1000 < P99_TARGET_MS if target_p50 else None))
    run.details.setdefault("cim", {})[backend] = {
        "ingest": {"readings": expected, "messages": len(files), "megabytes": round(size_mb, 1),
                   "seconds": round(ingest_s, 2), "server_cpu_s": round(ichild.cpu_s, 2),
                   "lxml_parse_s": round(parse_s, 3), "server_peak_rss_mib": round(ichild.peak_rss_mib, 1),
                   "message_ms": {k: round(v * 1000, 1) for k, v in ip.items()}},
        "get": {"rounds": rounds, "server_peak_rss_mib": round(gchild.peak_rss_mib, 1),
                **{k: {q: round(v * 1000, 2) for q, v in p.items()} for k, p in got.items()}}}


def _server_env(**extra: str) -> None:
    """Add ``extra`` to the environment of the servers this benchmark starts (for A/B runs)."""
    import functools

    from bench import ieee1888

    ieee1888.hub_env = functools.partial(ieee1888.hub_env, **extra)  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.cim [--backend sqlite] [--meters N] [--rounds N]``: this benchmark alone."""
    import argparse
    import tempfile

    from bench.harness import machine, markdown
    from bench.stores import fresh_database, postgresql_server

    p = argparse.ArgumentParser(prog="python -m bench.cim")
    p.add_argument("--backend", default="sqlite,postgresql")
    p.add_argument("--meters", type=int, default=METERS, help="meters in the ingested day (48 readings each)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed get rounds")
    p.add_argument("--out", type=Path, default=None, help="JSON result file")
    p.add_argument("--parse-workers", type=int, default=None,
                   help="the server's MDMHUB_CIM_PARSE_WORKERS (default: the hub's own choice)")
    args = p.parse_args(argv)
    if args.parse_workers is not None:
        _server_env(MDMHUB_CIM_PARSE_WORKERS=str(args.parse_workers))
    if not 2_000 <= args.meters <= 80_000:
        p.error("--meters must be between 2000 and 80000 (4 head-ends x 20,000)")
    backends = args.backend.split(",")
    pg = postgresql_server() if "postgresql" in backends else None
    run = Run(machine(pg["server_version"] if pg else None), options={"meters": args.meters, "rounds": args.rounds,
                                                                      "parse_workers": args.parse_workers})
    with tempfile.TemporaryDirectory(prefix="mdmhub-bench-") as tmp:
        for backend in backends:
            with fresh_database(backend, Path(tmp)) as url:
                bench_cim(run, backend, url, Path(tmp), meters=args.meters, rounds=args.rounds)
    if args.out:
        from bench.harness import write_json

        write_json(run, args.out)
    print(markdown(run))
    print(json.dumps(run.details, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
