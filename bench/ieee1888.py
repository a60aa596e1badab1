"""IEEE 1888 storage over real HTTP (SOAP 1.1 at /fiap), against a hub started with ``mdmhub serve``
in a child process (so its peak RSS is the server's own).

WRITE: 10,000 registered points x 48 values (one day at 30 minutes), sent by the hub's own client in
``dataRQ`` messages of 1,000 values, one message at a time (a gateway waits for OK before the next).
Timed from the first request to the last OK; every value is then counted in ``fiap_value``.
Baseline, same run, same rows: the raw driver's ``executemany`` of those rows into a plain table
with the same columns and key, one transaction per 1,000 rows.

FETCH: 1,000,000 stored values (50 points x 20,000 values at 5 minutes, loaded untimed before the
server starts) read with one query of 50 keys, ``acceptableSize`` 10,000, following the cursor to
the end (pages cross points). Each page's round trip is timed; values/s and the p99 of one page are
reported. Baseline: the same values read with the raw driver, by keyset pages of 10,000.

Set-up (untimed): ``mdmhub db upgrade``, the points registered through the point service. Peak
memory is the server process's own high-water RSS (``VmHWM``) read just before it is stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.harness import Measure, Run, percentiles
from bench.registration import ChildRun
from bench.stores import hub_env, migrate, mdmhub_command, settle

WRITE_POINTS = 10_000
WRITE_VALUES = 48
MESSAGE_VALUES = 1_000
FETCH_POINTS = 50
FETCH_VALUES = 20_000
PAGE = 10_000
WRITE_TARGET = 20_000.0
DAY = datetime(2026, 2, 1, tzinfo=UTC)
FETCH_START = datetime(2025, 6, 1, tzinfo=UTC)
WRITE_PREFIX = "http://bench.mdmhub.example/w/"
FETCH_PREFIX = "http://bench.mdmhub.example/f/"
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _engine_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# set-up ------------------------------------------------------------------------------------------

def prepare(url: str, write_points: int, fetch_points: int, fetch_values: int) -> None:
    """Register the points; load the FETCH values with core inserts (untimed)."""
    from hub.config import Settings
    from hub.model import FiapValue
    from hub.runtime import Hub
    from hub.services.points import PointIn

    migrate(url)
    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        points = [PointIn(point_id=f"{WRITE_PREFIX}{i:05d}/power", kind="power", unit="kW")
                  for i in range(write_points)]
        points += [PointIn(point_id=f"{FETCH_PREFIX}{i:03d}/temperature", kind="temperature", unit="Cel")
                   for i in range(fetch_points)]
        hub.fiap.points.register(points)
        table = FiapValue.__table__  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        with hub.db.engine.begin() as conn:
            for i in range(fetch_points):
                pid = f"{FETCH_PREFIX}{i:03d}/temperature"
                rows = [{"point_id": pid, "time": FETCH_START + timedelta(minutes=5 * n),
                         "value": f"{20 + (n % 100) / 10:.1f}", "number": 20 + (n % 100) / 10, "source": "bench",
                         "received_at": now} for n in range(fetch_values)]
                for lo in range(0, len(rows), 5000):
                    conn.execute(table.insert(), rows[lo:lo + 5000])
    finally:
        hub.close()
    settle(url)


# the server child --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mdmhub serve`` on a free port; ``stop()`` ends it with SIGTERM and reads its own rusage."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out = (workdir / f"serve-{self.port}.out").open("wb")
        self.err = (workdir / f"serve-{self.port}.err").open("wb")
        env = hub_env(url, MDMHUB_HTTP_HOST="127.0.0.1", MDMHUB_HTTP_PORT=str(self.port))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([*mdmhub_command(), "serve"], env=env, stdout=self.out, stderr=self.err)

    async def ready(self, timeout_s: float = 60.0) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}: {Path(self.err.name).read_text()[-2000:]}")
                try:
                    async with s.get(f"{self.base}/fiap?wsdl") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("server did not start")

    def peak_rss_mib(self) -> float:
        """The server's own high-water RSS (``VmHWM``). Not ``wait4``'s ``ru_maxrss``: Linux carries
        that across ``exec``, so it would include this (large) process's RSS at the fork."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM for the server process")

    def stop(self) -> ChildRun:
        peak = self.peak_rss_mib() if self.proc.poll() is None else float("nan")
        self.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.out.close()
        self.err.close()
        return ChildRun(self.proc.returncode, time.perf_counter() - self.started, peak,
                        usage.ru_utime + usage.ru_stime, Path(self.out.name).read_text(errors="replace"),
                        Path(self.err.name).read_text(errors="replace"))


# the client side ---------------------------------------------------------------------------------

def write_messages(points: int, values: int) -> list[list[Any]]:
    """(point, time, value) in point-major order, cut into messages of MESSAGE_VALUES values."""
    from adapters.ieee1888.messages import Point, Value, format_time

    flat = [(f"{WRITE_PREFIX}{i:05d}/power", format_time(DAY + timedelta(minutes=30 * n)), f"{(i + n) % 500 / 10:.1f}")
            for i in range(points) for n in range(values)]
    messages = []
    for lo in range(0, len(flat), MESSAGE_VALUES):
        by_point: dict[str, Point] = {}
        for pid, t, v in flat[lo:lo + MESSAGE_VALUES]:
            by_point.setdefault(pid, Point(pid)).values.append(Value(t, v))
        messages.append(list(by_point.values()))
    return messages


async def drive_write(base: str, messages: list[list[Any]]) -> tuple[float, list[float]]:
    from adapters.ieee1888.client import FiapClient

    lat = []
    async with FiapClient(timeout_s=120) as client:
        started = time.perf_counter()
        for m in messages:
            t0 = time.perf_counter()
            await client.write(f"{base}/fiap", m)
            lat.append(time.perf_counter() - t0)
        return time.perf_counter() - started, lat


async def drive_fetch(base: str, points: int) -> tuple[float, list[float], int]:
    from adapters.ieee1888.client import FiapClient
    from adapters.ieee1888.messages import Key, Query, transport_xml

    keys = [Key(f"{FETCH_PREFIX}{i:03d}/temperature", "time") for i in range(points)]
    q = Query(id=str(uuid.uuid4()), type="storage", keys=keys, acceptable_size=str(PAGE))
    lat: list[float] = []
    got = 0
    async with FiapClient(timeout_s=120) as client:
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            t = await client._post(f"{base}/fiap", "queryRQ", transport_xml(query=q))  # noqa: SLF001 - page timing
            lat.append(time.perf_counter() - t0)
            got += sum(len(p.values) for p in t.all_points())
            cursor = t.query.cursor if t.query is not None else None
            if not cursor:
                break
            q = Query(**{**q.__dict__, "cursor": cursor})
        return time.perf_counter() - started, lat, got


# baselines ---------------------------------------------------------------------------------------

def _raw(url: str) -> tuple[Any, str]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn, "?"
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(dsn, autocommit=True), "%s"


def baseline_write(url: str) -> tuple[float, int]:
    """The written rows inserted again by the raw driver, 1,000 per transaction: (seconds, rows)."""
    conn, p = _raw(url)
    sqlite_ = url.startswith("sqlite")
    rows = conn.execute(f"SELECT point_id, time, value, number, source, received_at FROM fiap_value "
                        f"WHERE point_id LIKE {p}", (WRITE_PREFIX + "%",)).fetchall()
    ts = "TIMESTAMP" if sqlite_ else "TIMESTAMPTZ"
    conn.execute(f"CREATE TABLE base_fiap (point_id VARCHAR(512), time {ts}, value VARCHAR(1023), number FLOAT, "
                 f"source VARCHAR(64), received_at {ts}, PRIMARY KEY (point_id, time))")
    sql = f"INSERT INTO base_fiap VALUES ({', '.join([p] * 6)})"
    started = time.perf_counter()
    if sqlite_:
        for lo in range(0, len(rows), MESSAGE_VALUES):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[lo:lo + MESSAGE_VALUES])
            conn.execute("COMMIT")
    else:
        cur = conn.cursor()
        for lo in range(0, len(rows), MESSAGE_VALUES):
            with conn.transaction():
                cur.executemany(sql, rows[lo:lo + MESSAGE_VALUES])
    elapsed = time.perf_counter() - started
    conn.execute("DROP TABLE base_fiap")
    conn.close()
    return elapsed, len(rows)


def baseline_fetch(url: str, points: int) -> tuple[float, int]:
    """The FETCH values read by the raw driver in keyset pages of PAGE: (seconds, values)."""
    conn, p = _raw(url)
    got = 0
    started = time.perf_counter()
    for i in range(points):
        pid = f"{FETCH_PREFIX}{i:03d}/temperature"
        after: Any = None
        while True:
            if after is None:
                rows = conn.execute(f"SELECT time, value FROM fiap_value WHERE point_id = {p} ORDER BY time "
                                    f"LIMIT {PAGE}", (pid,)).fetchall()
            else:
                rows = conn.execute(f"SELECT time, value FROM fiap_value WHERE point_id = {p} AND time > {p} "
                                    f"ORDER BY time LIMIT {PAGE}", (pid, after)).fetchall()
            got += len(rows)
            if len(rows) < PAGE:
                break
            after = rows[-1][0]
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, got


def _count(url: str, prefix: str) -> int:
    engine = create_engine(_engine_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM fiap_value WHERE point_id LIKE :p"),
                                    {"p": prefix + "%"}).scalar_one())
    finally:
        engine.dispose()


# the benchmark -----------------------------------------------------------------------------------

def bench_ieee1888(run: Run, backend: str, url: str, workdir: Path, *, write_points: int = WRITE_POINTS,
                   fetch_points: int = FETCH_POINTS, fetch_values: int = FETCH_VALUES) -> None:
    """WRITE then FETCH over HTTP, each against its own server process, then the raw baselines."""
    prepare(url, write_points, fetch_points, fetch_values)
    messages = write_messages(write_points, WRITE_VALUES)
    expected = write_points * WRITE_VALUES
    name = "IEEE 1888 storage (SOAP over HTTP)"

    server = Server(url, workdir)
    try:
        asyncio.run(server.ready())
        write_s, write_lat = asyncio.run(drive_write(server.base, messages))
    finally:
        wchild = server.stop()
    stored = _count(url, WRITE_PREFIX)
    if stored != expected:
        raise RuntimeError(f"WRITE stored {stored} of {expected} values: {wchild.stderr[-2000:]}")
    settle(url)
    base_ws, base_rows = baseline_write(url)
    rate = expected / write_s
    run.add(Measure(name, backend, f"WRITE {write_points:,} points x {WRITE_VALUES} in messages of "
                    f"{MESSAGE_VALUES:,}", rate, "values/s", base_rows / base_ws, "raw executemany",
                    f">= {WRITE_TARGET:,.0f} values/s", rate >= WRITE_TARGET))
    wp = percentiles(write_lat)
    run.add(Measure(name, backend, "WRITE: p99 of one message", wp["p99"] * 1000, "ms"))
    run.add(Measure(name, backend, "WRITE: server peak RSS", wchild.peak_rss_mib, "MiB"))

    server = Server(url, workdir)
    try:
        asyncio.run(server.ready())
        fetch_s, fetch_lat, got = asyncio.run(drive_fetch(server.base, fetch_points))
    finally:
        fchild = server.stop()
    total = fetch_points * fetch_values
    if got != total:
        raise RuntimeError(f"FETCH returned {got} of {total} values: {fchild.stderr[-2000:]}")
    base_fs, base_got = baseline_fetch(url, fetch_points)
    frate = got / fetch_s
    run.add(Measure(name, backend, f"FETCH {total:,} values, acceptableSize {PAGE:,}", frate, "values/s",
                    base_got / base_fs, "raw keyset select"))
    fp = percentiles(fetch_lat)
    run.add(Measure(name, backend, f"FETCH: p99 of one page ({len(fetch_lat)} pages)", fp["p99"] * 1000, "ms"))
    run.add(Measure(name, backend, "FETCH: server peak RSS", fchild.peak_rss_mib, "MiB"))
    run.details.setdefault("ieee1888", {})[backend] = {
        "write": {"values": expected, "messages": len(messages), "seconds": round(write_s, 2),
                  "server_cpu_s": round(wchild.cpu_s, 2), "baseline_s": round(base_ws, 3),
                  "message_ms": {k: round(v * 1000, 1) for k, v in wp.items()}},
        "fetch": {"values": got, "pages": len(fetch_lat), "seconds": round(fetch_s, 2),
                  "server_cpu_s": round(fchild.cpu_s, 2), "baseline_s": round(base_fs, 3),
                  "page_ms": {k: round(v * 1000, 1) for k, v in fp.items()}}}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.ieee1888 [--backend sqlite] [--write-points N] [--fetch-values N]``: this
    benchmark alone, printed as Markdown."""
    import argparse
    import tempfile

    from bench.harness import machine, markdown
    from bench.stores import fresh_database, postgresql_server

    p = argparse.ArgumentParser(prog="python -m bench.ieee1888")
    p.add_argument("--backend", default="sqlite,postgresql")
    p.add_argument("--write-points", type=int, default=WRITE_POINTS)
    p.add_argument("--fetch-values", type=int, default=FETCH_VALUES, help="values per FETCH point (50 points)")
    args = p.parse_args(argv)
    backends = args.backend.split(",")
    pg = postgresql_server() if "postgresql" in backends else None
    run = Run(machine(pg["server_version"] if pg else None))
    with tempfile.TemporaryDirectory(prefix="mdmhub-bench-") as tmp:
        for backend in backends:
            with fresh_database(backend, Path(tmp)) as url:
                bench_ieee1888(run, backend, url, Path(tmp), write_points=args.write_points,
                               fetch_values=args.fetch_values)
    print(markdown(run))
    print(json.dumps(run.details, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
