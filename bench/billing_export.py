"""Billing export: ``mdmhub billing export --kind ONTIME`` of one day of N meters (48 snapshots each,
3.84 M usage rows at the seed's 80,000), as an operator runs it.

The day is generated in the store with one set-based ``INSERT ... SELECT`` per half-hour slot (about
0.4 % of rows missing, the rest read on time), then planner statistics are brought up to date
(``stores.settle``). Measured: the CLI's wall time and peak RSS as a child process (interpreter start
and the schema check included). Baseline, same run, same rows, same order: a bare ``SELECT`` of the
stored columns through the raw driver (sqlite3, or a psycopg server-side cursor) written with
``csv.writer``; it runs before and after the export and the faster of the two counts.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import make_url

from bench.harness import Measure, Run
from bench.registration import run_child
from bench.stores import hub_env, mdmhub_command, settle
from hub.db import UTCDateTime

DAY = datetime(2026, 1, 5, tzinfo=UTC)
SLOTS = 48
TIME_TARGET_S = 60.0
RSS_TARGET_MIB = 500.0
_FETCH = 20_000
_BASE_SQL = ("SELECT ld_id, sub_number, measured_time, register_value, increment, status, quality "
             "FROM usage_history WHERE measured_time >= {p} AND measured_time < {p} "
             "AND status IN ('normal', 'missing') ORDER BY measured_time, ld_id, sub_number")


def generate_day(url: str, meters: int) -> float:
    """Insert one day of usage rows for ``meters`` meters; returns the seconds it took."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    sqlite = engine.dialect.name == "sqlite"
    source = ("WITH RECURSIVE m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < :n - 1) "
              "SELECT printf('LD%08d', i) AS ld, i FROM m") if sqlite else \
             "SELECT 'LD' || lpad(i::text, 8, '0') AS ld, i FROM generate_series(0, :n - 1) AS g(i)"
    stmt = text(
        "INSERT INTO usage_history (ld_id, sub_number, measured_time, register_value, increment, status, "
        "quality, source, updated_at) "
        "SELECT ld, 1, :t, CASE WHEN miss THEN NULL ELSE 1000 + (i % 500) + :slot * 0.25 END, "
        "CASE WHEN miss THEN NULL ELSE 0.25 + (i % 7) * 0.05 END, "
        "CASE WHEN miss THEN 'missing' ELSE 'normal' END, CASE WHEN miss THEN 2 ELSE 1 END, 'bench', :t "
        f"FROM (SELECT ld, i, ((i + :slot * 13) % 250 = 0) AS miss FROM ({source}) AS src) AS g"
    ).bindparams(bindparam("t", type_=UTCDateTime))
    started = time.perf_counter()
    try:
        for slot in range(SLOTS):
            with engine.begin() as conn:
                conn.execute(stmt, {"n": meters, "slot": slot, "t": DAY + slot * timedelta(minutes=30)})
    finally:
        engine.dispose()
    return time.perf_counter() - started


def baseline_export(url: str, out: Path) -> tuple[float, int]:
    """Bare SELECT + csv.writer of the same rows through the raw driver; (seconds, rows)."""
    end = DAY + timedelta(days=1)
    started = time.perf_counter()
    rows = 0
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if url.startswith("sqlite"):
            conn = sqlite3.connect(make_url(url).database)
            fmt = "%Y-%m-%d %H:%M:%S.%f"
            cur = conn.execute(_BASE_SQL.format(p="?"), (DAY.replace(tzinfo=None).strftime(fmt),
                                                         end.replace(tzinfo=None).strftime(fmt)))
            while chunk := cur.fetchmany(_FETCH):
                writer.writerows(chunk)
                rows += len(chunk)
            conn.close()
        else:
            import psycopg

            dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(dsn) as conn, conn.cursor(name="bench_baseline") as cur:
                cur.itersize = _FETCH
                cur.execute(_BASE_SQL.format(p="%s"), (DAY, end))
                while chunk := cur.fetchmany(_FETCH):
                    writer.writerows(chunk)
                    rows += len(chunk)
    return time.perf_counter() - started, rows


def bench_billing_export(run: Run, backend: str, url: str, meters: int, workdir: Path) -> None:
    """Generate the day, then time the CLI export against the bare baseline."""
    name = f"billing export, ONTIME day of {meters:,} meters"
    expected = meters * SLOTS
    gen_s = generate_day(url, meters)
    settle(url)
    base_first, base_rows = baseline_export(url, workdir / "baseline.csv")
    out = workdir / "usage_ONTIME.csv"
    child = run_child([*mdmhub_command(), "billing", "export", "--kind", "ONTIME", "--from", DAY.date().isoformat(),
                       "--to", DAY.date().isoformat(), "--out", str(out)], hub_env(url), workdir)
    if child.returncode != 0:
        raise RuntimeError(f"export failed ({child.returncode}): {child.stderr[-2000:]}")
    base_again, _ = baseline_export(url, workdir / "baseline.csv")
    base_s = min(base_first, base_again)
    with out.open("rb") as fh:
        exported = sum(1 for _ in fh) - 1
    if exported != expected or base_rows != expected:
        raise RuntimeError(f"expected {expected:,} rows; the export wrote {exported:,}, the baseline {base_rows:,}")
    run.add(Measure(name, backend, "wall time", child.wall_s, "s", base_s, "bare SELECT + csv.writer",
                    f"< {TIME_TARGET_S:.0f} s", child.wall_s < TIME_TARGET_S))
    run.add(Measure(name, backend, "throughput", expected / child.wall_s, "rows/s", expected / base_s,
                    "bare SELECT + csv.writer"))
    run.add(Measure(name, backend, "peak RSS", child.peak_rss_mib, "MiB",
                    target=f"< {RSS_TARGET_MIB:.0f} MB", met=child.peak_rss_mib * 1.048576 < RSS_TARGET_MIB))
    run.details.setdefault("billing_export", {})[backend] = {
        "rows": expected, "generate_s": round(gen_s, 2), "file_mib": round(out.stat().st_size / 2**20, 1),
        "baseline_s": [round(base_first, 2), round(base_again, 2)], "cpu_s": round(child.cpu_s, 2)}
    out.unlink()
    (workdir / "baseline.csv").unlink(missing_ok=True)
