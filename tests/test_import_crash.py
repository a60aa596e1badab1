"""A bulk import killed outright (SIGKILL, no clean-up of any kind) leaves whole batches behind, never a
device without its comms row or logical device, and the same file can simply be imported again."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from hub.runtime import Hub

ROWS = 12_000
BATCH = 1_000
KILL_AFTER = 2 * BATCH  # kill once at least two batches are committed


def _write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["type_id", "ld_type_id", "pd_id", "serial", "mac", "ld_id", "cluster_id"])
        for n in range(1, rows + 1):
            writer.writerow([11, 101, f"CRASH{n:010d}", f"SN-CRASH-{n:08d}", f"02CC{n:08X}", f"LD-CRASH-{n:08d}",
                             "demo-tower-a"])


def _import(csv_path: Path, database_url: str) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).with_name("mdmhub")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "hub.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDMHUB_")}
    env.update(MDMHUB_DATABASE_URL=database_url, MDMHUB_REGISTRY_IMPORT_BATCH_SIZE=str(BATCH),
               MDMHUB_LOG_FORMAT="text")
    return subprocess.Popen([*argv, "devices", "import", str(csv_path), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _scalar(hub: Hub, sql: str) -> object:
    with hub.db.engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def _kill_once_batches_are_stored(proc: subprocess.Popen[bytes], hub: Hub, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while _count(hub, "physical_device") < KILL_AFTER:
        assert proc.poll() is None, f"the import ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "the import stored nothing in time"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the import finished before the kill landed"
    return _count(hub, "physical_device")


def _count(hub: Hub, table: str) -> int:
    return int(_scalar(hub, f"SELECT count(*) FROM {table}"))  # type: ignore[call-overload]


def test_killed_import_leaves_whole_batches_and_can_be_run_again(catalog: Hub, tmp_path: Path) -> None:
    hub = catalog
    url = hub.settings.database_url
    csv_path = tmp_path / "devices.csv"
    _write_csv(csv_path, ROWS)

    stored = _kill_once_batches_are_stored(_import(csv_path, url), hub)

    assert KILL_AFTER <= stored < ROWS
    assert stored % BATCH == 0, f"{stored} devices is not a whole number of {BATCH}-row batches"
    assert _scalar(hub, "SELECT count(*) FROM physical_device pd WHERE NOT EXISTS (SELECT 1 FROM "
                        "physical_device_comms c WHERE c.physical_device_id = pd.id)") == 0
    assert _count(hub, "physical_device_comms") == stored
    assert _scalar(hub, "SELECT count(*) FROM physical_device pd WHERE NOT EXISTS (SELECT 1 FROM "
                        "logical_device ld WHERE ld.physical_device_id = pd.id)") == 0
    assert _count(hub, "logical_device") == stored
    # Batches commit in file order: what survived is exactly the head of the file.
    assert _scalar(hub, "SELECT max(pd_id) FROM physical_device") == f"CRASH{stored:010d}"

    rerun = _import(csv_path, url)
    out, err = rerun.communicate(timeout=120)
    report = json.loads(out)
    assert rerun.returncode == 1, err  # the rows already stored are refused, so the import reports failures
    assert (report["rows"], report["stored"], report["failed"]) == (ROWS, ROWS - stored, stored)
    first = report["errors"][0]
    assert first["line"] == 2 and "already registered" in first["message"]
    assert all("already registered" in e["message"] for e in report["errors"])
    for table in ("physical_device", "physical_device_comms", "logical_device"):
        assert _count(hub, table) == ROWS, table
    assert _scalar(hub, "SELECT count(DISTINCT pd_id) FROM physical_device") == ROWS
    assert _scalar(hub, "SELECT count(DISTINCT physical_device_id) FROM logical_device") == ROWS
