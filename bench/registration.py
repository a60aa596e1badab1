"""Bulk registration: ``mdmhub devices import FILE`` of N meters (PD + comms + LD) from a CSV file.

Measured: the CLI's wall time and peak RSS as a child process, exactly as an operator runs it on a
migrated database holding the seed's catalogue. Baseline, same run, same rows: a bare
``executemany`` into three plain tables with the same columns, keys and indexes, through the raw
driver (sqlite3 / psycopg), one transaction per batch of the hub's batch size.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Measure, Run
from bench.fleet import Fleet, register_concentrators, registration_rows, write_csv
from bench.stores import hub_env, mdmhub_command, migrate, seed_catalogue
from hub.config import RegistrySection

TIME_TARGET_S = 30.0
RSS_TARGET_MIB = 500.0
BATCH_SIZE = RegistrySection().import_batch_size  # the hub's default batch, used by the baseline too


@dataclass
class ChildRun:
    """A finished child process: exit code, wall time, its own peak RSS and CPU time, stdout."""

    returncode: int
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    stdout: str
    stderr: str


def run_child(argv: list[str], env: dict[str, str], workdir: Path) -> ChildRun:
    """Run a command and read the resources of that one child (``os.wait4``), not of every child."""
    out, err = workdir / "child.out", workdir / "child.err"
    with out.open("wb") as fo, err.open("wb") as fe:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(proc.returncode, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime,
                    out.read_text(encoding="utf-8", errors="replace"), err.read_text(encoding="utf-8", errors="replace"))


def import_devices(url: str, csv_path: Path, workdir: Path, **env: str) -> ChildRun:
    """``mdmhub devices import FILE --quiet`` against ``url``; fails loudly unless every row is stored."""
    child = run_child([*mdmhub_command(), "devices", "import", str(csv_path), "--quiet"], hub_env(url, **env), workdir)
    if child.returncode != 0:
        raise RuntimeError(f"import failed ({child.returncode}): {child.stdout[-2000:]} {child.stderr[-2000:]}")
    return child


def prepare_store(url: str, fleet: Fleet) -> None:
    """Migrate with the CLI; seed the catalogue and the fleet's concentrators through the services."""
    migrate(url)
    seed_catalogue(url)
    register_concentrators(url, fleet)


def bench_registration(run: Run, backend: str, url: str, count: int, workdir: Path) -> None:
    """Import ``count`` meters into the empty store at ``url``, then time the baseline."""
    fleet = Fleet(count)
    csv_path = write_csv(workdir / f"registration-{count}.csv", fleet)
    prepare_store(url, fleet)
    child = import_devices(url, csv_path, workdir)
    report = json.loads(child.stdout)
    if report["stored"] != count:
        raise RuntimeError(f"import stored {report['stored']} of {count} rows: {report['errors'][:3]}")
    base_s = baseline_insert(backend, url, count)
    name = f"registration ({count:,} meters)"
    run.add(Measure(name, backend, "wall time", child.wall_s, "s", base_s, "raw executemany",
                    f"< {TIME_TARGET_S:.0f} s", child.wall_s < TIME_TARGET_S))
    run.add(Measure(name, backend, "throughput", count / child.wall_s, "rows/s", count / base_s, "raw executemany"))
    run.add(Measure(name, backend, "peak RSS", child.peak_rss_mib, "MiB",
                    target=f"< {RSS_TARGET_MIB:.0f} MB", met=child.peak_rss_mib * 1.048576 < RSS_TARGET_MIB))
    run.details.setdefault("registration", {})[backend] = {
        "rows": count, "wall_s": round(child.wall_s, 3), "cpu_s": round(child.cpu_s, 3),
        "peak_rss_mib": round(child.peak_rss_mib, 1), "baseline_s": round(base_s, 3),
        "batches_committed": report["batches_committed"], "assigned_per_head_end": report["assigned_per_head_end"],
        "csv_bytes": csv_path.stat().st_size, "concentrators": len(fleet.concentrators),
    }


# baseline ----------------------------------------------------------------------------------------
_DDL = """
CREATE TABLE base_pd (
  id INTEGER PRIMARY KEY, pd_id VARCHAR(15) UNIQUE, concentrator_id INTEGER NOT NULL,
  type_id INTEGER NOT NULL, serial VARCHAR(64) UNIQUE, mac VARCHAR(12) UNIQUE, name VARCHAR(128),
  config_state INTEGER NOT NULL, installed_at {ts}, deleted {bool} NOT NULL, deleted_at {ts},
  created_at {ts} NOT NULL, updated_at {ts} NOT NULL);
CREATE INDEX ix_base_pd_concentrator_id ON base_pd (concentrator_id);
CREATE TABLE base_comms (
  physical_device_id INTEGER PRIMARY KEY REFERENCES base_pd (id), ip VARCHAR(45), port INTEGER,
  cert_serial VARCHAR(64), password VARCHAR(128), common_key VARCHAR(256), session_key VARCHAR(256),
  use_state VARCHAR(1) NOT NULL, dhcp_done {bool} NOT NULL, provisioned {bool} NOT NULL,
  key_updated_at {ts}, collection_start_at {ts}, collection_stop_at {ts}, updated_at {ts} NOT NULL);
CREATE INDEX ix_base_comms_cert_serial ON base_comms (cert_serial);
CREATE TABLE base_ld (
  id INTEGER PRIMARY KEY, ld_id VARCHAR(64) UNIQUE, physical_device_id INTEGER NOT NULL REFERENCES base_pd (id),
  ld_address INTEGER NOT NULL, type_id INTEGER NOT NULL, cluster_id VARCHAR, name VARCHAR(128),
  contract_amps INTEGER NOT NULL, relay_state INTEGER NOT NULL, installed_at {ts}, deleted {bool} NOT NULL,
  deleted_at {ts}, created_at {ts} NOT NULL, updated_at {ts} NOT NULL, UNIQUE (physical_device_id, ld_address));
CREATE INDEX ix_base_ld_cluster_id ON base_ld (cluster_id);
CREATE INDEX ix_base_ld_physical_device_id ON base_ld (physical_device_id);
"""
_PD = ("INSERT INTO base_pd VALUES ({})".format(", ".join(["{p}"] * 13)))
_COMMS = ("INSERT INTO base_comms VALUES ({})".format(", ".join(["{p}"] * 14)))
_LD = ("INSERT INTO base_ld VALUES ({})".format(", ".join(["{p}"] * 14)))


def _baseline_rows(count: int, now: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    pds, comms, lds = [], [], []
    for key, r in enumerate(registration_rows(Fleet(count)), start=1):
        pds.append((key, r["pd_id"], 1, 11, r["serial"], r["mac"], r["name"], 1, None, False, None, now, now))
        comms.append((key, r["ip"], r["port"], r["cert_serial"], r["password"], None, None, "N", False, False,
                      None, None, None, now))
        lds.append((key, r["ld_id"], key, 2, 101, r["cluster_id"], r["ld_name"], r["contract_amps"], 1, now, False,
                    None, now, now))
    return pds, comms, lds


def baseline_insert(backend: str, url: str, count: int) -> float:
    """Seconds to insert the same rows with the raw driver, batch by batch (rows built beforehand)."""
    if backend == "sqlite":
        path = Path(url.removeprefix("sqlite:///")).with_name("baseline.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_DDL.format(ts="TIMESTAMP", bool="BOOLEAN"))
        pds, comms, lds = _baseline_rows(count, datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" "))
        started = time.perf_counter()
        for lo in range(0, count, BATCH_SIZE):
            conn.execute("BEGIN")
            conn.executemany(_PD.format(p="?"), pds[lo:lo + BATCH_SIZE])
            conn.executemany(_COMMS.format(p="?"), comms[lo:lo + BATCH_SIZE])
            conn.executemany(_LD.format(p="?"), lds[lo:lo + BATCH_SIZE])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.close()
        return elapsed

    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute(_DDL.format(ts="TIMESTAMPTZ", bool="BOOLEAN"))
        conn.commit()
        pds, comms, lds = _baseline_rows(count, datetime.now(UTC))
        started = time.perf_counter()
        with conn.cursor() as cur:
            for lo in range(0, count, BATCH_SIZE):
                cur.executemany(_PD.format(p="%s"), pds[lo:lo + BATCH_SIZE])
                cur.executemany(_COMMS.format(p="%s"), comms[lo:lo + BATCH_SIZE])
                cur.executemany(_LD.format(p="%s"), lds[lo:lo + BATCH_SIZE])
                conn.commit()
        elapsed = time.perf_counter() - started
        with conn.cursor() as cur:
            cur.execute("DROP TABLE base_ld, base_comms, base_pd")
        conn.commit()
    return elapsed
