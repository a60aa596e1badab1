"""Billing files and quotes: ONTIME / PAST usage files, quote import, pseudo-billing, manual
correction and retention purge, on both stores, plus the CLI as an operator runs it.

Usage and quote rows are inserted here the way collection stores them: a usage row for every expected
snapshot (normal, missing or re-collected) and an empty quote row beside each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from hub.model import Cluster, CorrectionParameter, QuoteHistory, UsageHistory
from hub.services.billing import USAGE_COLUMNS, period_bound
from hub.services.errors import InvalidInput, NotFound
from hub.services.quality import Quality
from hub.services.registry import DeviceRegistration

DAY = datetime(2026, 1, 5, tzinfo=UTC)
SLOT = timedelta(minutes=30)


def t(slot: int, day: datetime = DAY) -> datetime:
    return day + slot * SLOT


def usage(ld_id: str, slot: int, *, status: str = "normal", register: float | None = None,
          increment: float | None = None, recollected: float | None = None, day: datetime = DAY,
          quality: int | None = None) -> dict[str, Any]:
    if quality is None:
        quality = {"normal": Quality.VALID, "missing": Quality.MISSING,
                   "recollected": Quality.VALID | Quality.RECOLLECTED}[status]
    return {"ld_id": ld_id, "sub_number": 1, "measured_time": t(slot, day), "register_value": register,
            "increment": increment, "status": status, "recollected_increment": recollected,
            "quality": int(quality), "source": "test", "updated_at": t(slot, day)}


def store(hub, rows: list[dict[str, Any]]) -> None:
    """Set-based insert of usage rows with an empty quote row for each, as collection does."""
    quotes = [{k: r[k] for k in ("ld_id", "sub_number", "measured_time")} | {"updated_at": r["updated_at"]}
              for r in rows]
    with hub.db.session() as s:
        s.execute(insert(UsageHistory), rows)
        s.execute(insert(QuoteHistory), quotes)


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open(encoding="utf-8", newline="")))


def data_rows(path: Path) -> list[list[Any]]:
    """The file's rows after the header, numbers as numbers (a store may write 100 or 100.0)."""
    return [[*row[:3], *(float(v) if v else None for v in row[3:5]), *row[5:]] for row in read_csv(path)[1:]]


def quote(hub, ld_id: str, slot: int, day: datetime = DAY) -> QuoteHistory:
    with hub.db.session() as s:
        return s.get(QuoteHistory, (ld_id, 1, t(slot, day)))


def count(hub, table: type) -> int:
    with hub.db.session() as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def day_of_usage(hub):
    """Three meters on one day: A read on time, B with a gap re-collected at slot 2 (slot 3's increment
    recomputed), C missing at slot 1 for good; plus one row of the next day that no export of DAY shows."""
    store(hub, [
        usage("LD-A", 0, register=100.0, increment=0.5),
        usage("LD-A", 1, register=100.75, increment=0.75),
        usage("LD-B", 0, register=10.0, increment=0.25),
        usage("LD-B", 1, register=10.5, increment=0.5),
        usage("LD-B", 2, status="recollected", register=11.0, recollected=0.5),
        usage("LD-B", 3, register=11.25, increment=0.75, recollected=0.25,
              quality=Quality.VALID | Quality.SPANS_GAP | Quality.RECALCULATED),
        usage("LD-C", 0, register=5.0, increment=0.125),
        usage("LD-C", 1, status="missing"),
        usage("LD-A", 0, register=999.0, increment=9.0, day=DAY + timedelta(days=1)),
    ])
    return hub


def test_ontime_file_lists_on_time_rows_and_says_which_are_missing(day_of_usage, tmp_path):
    hub = day_of_usage
    result = hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1), tmp_path / "out" / "ontime.csv")
    assert read_csv(tmp_path / "out" / "ontime.csv")[0] == list(USAGE_COLUMNS)
    assert data_rows(tmp_path / "out" / "ontime.csv") == [  # time order, then LD_ID; the re-collected rows belong to PAST files
        ["LD-A", "1", "2026-01-05T00:00:00Z", 100.0, 0.5, "normal", "valid"],
        ["LD-B", "1", "2026-01-05T00:00:00Z", 10.0, 0.25, "normal", "valid"],
        ["LD-C", "1", "2026-01-05T00:00:00Z", 5.0, 0.125, "normal", "valid"],
        ["LD-A", "1", "2026-01-05T00:30:00Z", 100.75, 0.75, "normal", "valid"],
        ["LD-B", "1", "2026-01-05T00:30:00Z", 10.5, 0.5, "normal", "valid"],
        ["LD-C", "1", "2026-01-05T00:30:00Z", None, None, "missing", "missing"],
        ["LD-B", "1", "2026-01-05T01:30:00Z", 11.25, 0.75, "normal", "valid spans-gap recalculated"],
    ]
    assert (result.rows, result.missing) == (7, 1)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ontime.csv"]  # no half-written file left behind


def test_past_file_carries_recollected_increments_and_rows_still_missing(day_of_usage, tmp_path):
    hub = day_of_usage
    hub.billing.export_usage("PAST", DAY, DAY + timedelta(days=1), tmp_path / "past.csv")
    assert data_rows(tmp_path / "past.csv") == [
        ["LD-C", "1", "2026-01-05T00:30:00Z", None, None, "missing", "missing"],
        ["LD-B", "1", "2026-01-05T01:00:00Z", 11.0, 0.5, "recollected", "valid recollected"],
        ["LD-B", "1", "2026-01-05T01:30:00Z", 11.25, 0.25, "normal", "valid spans-gap recalculated"],
    ]


def test_missing_rows_are_left_out_when_the_setting_says_so(day_of_usage, tmp_path):
    hub = day_of_usage
    hub.billing.settings = hub.billing.settings.model_copy(update={"include_missing": False})
    result = hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1), tmp_path / "f.csv")
    assert result.missing == 0 and result.rows == 6
    assert all(row[5] != "missing" for row in read_csv(tmp_path / "f.csv")[1:])


def test_the_default_file_goes_to_the_export_folder_and_replaces_an_older_one(day_of_usage):
    hub = day_of_usage
    first = hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1))
    assert first.path.parent == hub.settings.data.dir / "billing"
    assert first.path.name == "usage_ONTIME_20260105T0000Z_20260106T0000Z.csv"
    store(hub, [usage("LD-D", 0, register=1.0, increment=1.0)])
    again = hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1))
    assert again.path == first.path and len(read_csv(again.path)) == 1 + 8
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]


def test_a_failed_export_leaves_the_previous_file_whole(day_of_usage, tmp_path, monkeypatch):
    hub = day_of_usage
    target = tmp_path / "out" / "ontime.csv"
    hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1), target)
    before = target.read_bytes()
    store(hub, [usage("LD-D", 0, register=1.0, increment=1.0)])

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hub.services.billing.os.fsync", disk_full)
    with pytest.raises(OSError):
        hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1), target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["ontime.csv"]


def test_period_bounds_days_are_whole_utc_days_and_datetimes_need_a_zone(hub):
    assert period_bound("2026-01-05") == DAY
    assert period_bound("2026-01-05", end=True) == DAY + timedelta(days=1)
    assert period_bound("2026-01-05T00:00:00+09:00") == DAY - timedelta(hours=9)
    with pytest.raises(InvalidInput):
        period_bound("2026-01-05T00:00:00")
    with pytest.raises(InvalidInput):
        hub.billing.export_usage("DAILY", DAY, DAY + timedelta(days=1))
    with pytest.raises(InvalidInput):
        hub.billing.export_usage("ONTIME", DAY, DAY)


def reply_from(export: Path, charge_per_kwh: float, extra: list[str] | None = None) -> str:
    """What a billing system sends back: the usage file with a charge column added."""
    rows = read_csv(export)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*rows[0], "estimated_charge"])
    for row in rows[1:]:
        w.writerow([*row, f"{float(row[4]) * charge_per_kwh}" if row[4] else ""])
    for line in extra or []:
        out.write(line + "\n")
    return out.getvalue()


def test_round_trip_export_reply_import_updates_quotes_and_never_inserts(day_of_usage, tmp_path):
    hub = day_of_usage
    export = hub.billing.export_usage("ONTIME", DAY, DAY + timedelta(days=1), tmp_path / "ontime.csv").path
    quotes_before = count(hub, QuoteHistory)
    reply = reply_from(export, 30.0, extra=["LD-ZZ,1,2026-01-05T00:00:00Z,,0.5,normal,valid,15.0"])
    report = hub.billing.import_quotes(io.StringIO(reply))
    assert report.updated == 7 and report.lines == 8
    assert report.unknown == [{"line": 9, "ld_id": "LD-ZZ", "sub_number": 1,
                               "measured_time": "2026-01-05T00:00:00+00:00"}]
    assert count(hub, QuoteHistory) == quotes_before  # the unknown row was not inserted
    a = quote(hub, "LD-A", 1)
    assert (a.increment, a.estimated_charge, a.source) == (0.75, 22.5, "billing")
    missing = quote(hub, "LD-C", 1)
    assert (missing.increment, missing.estimated_charge) == (None, None)  # blank cells store nothing
    assert quote(hub, "LD-B", 2).estimated_charge is None  # a PAST row: not in the ONTIME reply


def test_bad_reply_lines_are_reported_by_line_and_the_good_ones_stored(day_of_usage):
    hub = day_of_usage
    reply = ("ld_id,sub_number,measured_time,estimated_charge\n"
             "LD-A,1,2026-01-05T00:00:00Z,12.5\n"
             "LD-A,x,2026-01-05T00:30:00Z,1\n"
             "LD-A,1,2026-01-05 00:30:00,1\n"
             "LD-A,1,2026-01-05T00:30:00+00:00,lots\n")
    report = hub.billing.import_quotes(io.StringIO(reply))
    assert report.updated == 1 and quote(hub, "LD-A", 0).estimated_charge == 12.5
    assert [(e["line"], e["field"]) for e in report.errors] == [
        (3, "sub_number"), (4, "measured_time"), (5, "estimated_charge")]
    assert quote(hub, "LD-A", 1).estimated_charge is None
    with pytest.raises(InvalidInput):
        hub.billing.import_quotes(io.StringIO("ld_id,measured_time,estimated_charge\n"))
    with pytest.raises(InvalidInput):
        hub.billing.import_quotes(io.StringIO("ld_id,sub_number,measured_time,status\n"))


def test_imports_in_batches_update_every_row(day_of_usage):
    hub = day_of_usage
    hub.billing.settings = hub.billing.settings.model_copy(update={"batch_size": 2})
    lines = ["ld_id,sub_number,measured_time,increment,estimated_charge"]
    lines += [f"LD-A,1,{t(slot).isoformat()},1.0,{slot + 1}" for slot in (0, 1)]
    lines += [f"LD-B,1,{t(slot).isoformat()},1.0,{slot + 10}" for slot in (0, 1, 2, 3)]
    lines += ["LD-Q,1,2026-01-05T00:00:00Z,1.0,1"]
    report = hub.billing.import_quotes(io.StringIO("\n".join(lines) + "\n"))
    assert (report.updated, report.unknown_count) == (6, 1)
    assert [quote(hub, "LD-B", s).estimated_charge for s in range(4)] == [10, 11, 12, 13]


@pytest.fixture
def priced(catalog):
    """LD-A in a cluster with its own menu (changed at 01:00), LD-B with no cluster: the global menu."""
    hub = catalog
    for ld_id, cluster in (("LD-A", "demo-tower-a"), ("LD-B", None)):
        hub.registry.register(DeviceRegistration(type_id=11, ld_type_id=101, ld_id=ld_id, cluster_id=cluster))
    with hub.db.session() as s:
        s.add(CorrectionParameter(param_id="tower", valid_from=DAY - timedelta(days=30), valid_to=t(2),
                                  coefficient=1.1, unit_price=20.0, co2_factor=0.5))
        s.add(CorrectionParameter(param_id="tower", valid_from=t(2), coefficient=1.0, unit_price=40.0,
                                  co2_factor=0.25))
        s.add(CorrectionParameter(param_id=GLOBAL, valid_from=DAY - timedelta(days=365), coefficient=1.0,
                                  unit_price=30.0, co2_factor=0.4))
        s.execute(update(Cluster).where(Cluster.cluster_id == "demo-tower-a").values(param_id="tower"))
    store(hub, [
        usage("LD-A", 0, register=1.0, increment=2.0),
        usage("LD-A", 2, register=3.0, increment=2.0),
        usage("LD-B", 0, register=1.0, increment=1.0),
        usage("LD-B", 1, status="missing"),
        usage("LD-B", 2, status="recollected", register=3.0, recollected=0.5),
    ])
    return hub


GLOBAL = "global"


def test_pseudo_billing_prices_with_the_cluster_parameter_valid_at_the_time(priced):
    hub = priced
    assert hub.billing.simulate(DAY, DAY + timedelta(days=1))["updated"] == 5
    before, after = quote(hub, "LD-A", 0), quote(hub, "LD-A", 2)
    assert before.increment == 2.0 and before.estimated_charge == pytest.approx(2.0 * 1.1 * 20.0)
    assert before.co2_kg == pytest.approx(1.0) and before.source == "simulated"
    assert after.estimated_charge == pytest.approx(2.0 * 40.0) and after.co2_kg == pytest.approx(0.5)


def test_pseudo_billing_uses_the_global_parameter_without_a_cluster(priced):
    hub = priced
    hub.billing.simulate(DAY, DAY + timedelta(days=1))
    b0, b1, b2 = (quote(hub, "LD-B", s) for s in range(3))
    assert (b0.estimated_charge, b0.co2_kg) == (pytest.approx(30.0), pytest.approx(0.4))
    assert (b1.increment, b1.estimated_charge) == (None, None)  # missing: nothing to bill
    assert (b2.increment, b2.estimated_charge) == (0.5, pytest.approx(15.0))  # the re-collected increment


def test_pseudo_billing_without_any_parameter_leaves_charges_empty(catalog):
    hub = catalog
    store(hub, [usage("LD-N", 0, register=1.0, increment=1.0)])
    hub.billing.simulate(DAY, DAY + timedelta(days=1))
    q = quote(hub, "LD-N", 0)
    assert (q.increment, q.estimated_charge, q.co2_kg) == (1.0, None, None)


def test_manual_correction_updates_the_quote_only_and_later_runs_keep_it(priced):
    hub = priced
    hub.billing.simulate(DAY, DAY + timedelta(days=1))
    fixed = hub.billing.correct("LD-A", 1, t(2), 1.5)
    assert fixed["corrected"] and fixed["estimated_charge"] == pytest.approx(1.5 * 40.0)
    with hub.db.session() as s:
        raw = s.get(UsageHistory, ("LD-A", 1, t(2)))
    assert (raw.increment, raw.register_value, raw.status) == (2.0, 3.0, "normal")  # raw usage untouched
    hub.billing.simulate(DAY, DAY + timedelta(days=1))
    report = hub.billing.import_quotes(io.StringIO(
        f"ld_id,sub_number,measured_time,increment,estimated_charge\nLD-A,1,{t(2).isoformat()},9,999\n"))
    assert (report.updated, report.kept_corrected) == (0, 1)
    q = quote(hub, "LD-A", 2)
    assert (q.increment, q.estimated_charge, q.corrected, q.source) == (1.5, pytest.approx(60.0), True, "manual")
    assert hub.billing.correct("LD-B", 1, t(0), 2.0, estimated_charge=7.0)["estimated_charge"] == 7.0
    with pytest.raises(NotFound):
        hub.billing.correct("LD-A", 1, t(40), 1.0)


def test_purge_deletes_rows_older_than_each_tables_retention(hub):
    now = DAY + timedelta(days=100)
    store(hub, [usage("LD-P", s, register=1.0, increment=0.0, day=now - timedelta(days=d))
                for d in (1, 59, 61, 90) for s in range(0, 48, 6)])
    hub.billing.settings = hub.billing.settings.model_copy(
        update={"usage_retention_days": 60, "quote_retention_days": 80})
    result = hub.billing.purge(now)
    assert result["usage_history"]["deleted"] == 16 and result["quote_history"]["deleted"] == 8
    with hub.db.session() as s:
        oldest_usage = s.execute(select(func.min(UsageHistory.measured_time))).scalar_one()
        oldest_quote = s.execute(select(func.min(QuoteHistory.measured_time))).scalar_one()
    assert oldest_usage == now - timedelta(days=59) and oldest_quote == now - timedelta(days=61)
    assert hub.billing.purge(now)["usage_history"]["deleted"] == 0


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", "billing", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_cli_round_trip_export_import_simulate_correct_purge(priced, tmp_path):
    hub = priced
    env = {"MDMHUB_DATABASE_URL": hub.settings.database_url, "MDMHUB_DATA_DIR": str(tmp_path / "data"),
           "MDMHUB_LOG_FORMAT": "text"}
    exported = run_cli(["export", "--kind", "ONTIME", "--from", "2026-01-05", "--to", "2026-01-05"], env)
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert summary["rows"] == 4 and summary["missing"] == 1
    path = Path(summary["path"])
    assert path.parent == tmp_path / "data" / "billing"
    reply = tmp_path / "reply.csv"
    reply.write_text(reply_from(path, 10.0))
    imported = run_cli(["import-quotes", str(reply)], env)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["updated"] == 4
    assert quote(hub, "LD-A", 0).estimated_charge == pytest.approx(20.0)
    reply.write_text("ld_id,sub_number,measured_time,estimated_charge\nLD-X,1,2026-01-05T00:00:00Z,1\n")
    refused = run_cli(["import-quotes", str(reply)], env)
    assert refused.returncode == 1 and json.loads(refused.stdout)["unknown"][0]["line"] == 2
    simulated = run_cli(["simulate", "--from", "2026-01-05", "--to", "2026-01-05"], env)
    assert json.loads(simulated.stdout)["updated"] == 5
    corrected = run_cli(["correct", "LD-A", "1", "2026-01-05T00:00:00Z", "3"], env)
    assert corrected.returncode == 0, corrected.stderr
    assert quote(hub, "LD-A", 0).corrected
    naive = run_cli(["correct", "LD-A", "1", "2026-01-05T00:00:00", "3"], env)
    assert naive.returncode != 0 and "time zone" in naive.stderr
    purged = run_cli(["purge"], env)  # the rows are from 2026-01-05: older than 60 days from today
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["usage_history"]["deleted"] == 5
    assert count(hub, UsageHistory) == 0
