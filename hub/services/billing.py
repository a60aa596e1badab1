"""Billing files and quotes: usage export (ONTIME / PAST), quote import, pseudo-billing, manual
correction and retention purge (the seed's EXPORT_USAGE, IMPORT_BILL, SIMULATE_BILL, CORRECT_QUOTE).

Everything here works on whole periods of the two big history tables, so it is written as plain SQL
on both stores: exports stream tuples from a server-side cursor into ``csv.writer``; imports and
pseudo-billing are set-based updates in batches. Raw usage rows are only ever read (and purged):
billing results, imports and corrections live in ``quote_history``, and a correction is also kept
as a usage version (:mod:`hub.services.usage_versions`). The file layout is in docs/billing.md.

A usage row's quote row is created empty with it by the scheduled collection, but pushed reads
(:mod:`hub.services.usage_writer`: bulk 61968-9 MeterReadings, IEEE 1888, MQTT) come without one, so
billing creates the quote rows of usage rows that have none when it first imports, prices or corrects
them (:func:`_add_missing_quotes`, the same empty row the collection would have written).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO

from sqlalchemy import bindparam, select, text, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from hub.config import BillingSection, EstimationSection
from hub.db import Database, UTCDateTime, utcnow
from hub.model import Cluster, CorrectionParameter, LogicalDevice, QuoteHistory, UsageHistory
from hub.services.errors import FieldError, InvalidInput, NotFound
from hub.services.estimation import ESTIMATED_STATUS, Limits, Snapshot
from hub.services.quality import FLAG_NAMES, Quality, quality_names
from hub.services.usage import estimates_between
from hub.services.usage_rollup import UsageRollupService
from hub.services.usage_versions import add_version
from hub.services.usage_writer import insert_ignore

Kind = Literal["ONTIME", "PAST"]
KINDS: tuple[Kind, ...] = ("ONTIME", "PAST")
USAGE_COLUMNS = ("ld_id", "sub_number", "measured_time", "register_value", "increment", "status", "quality")
REPLY_KEY_COLUMNS = ("ld_id", "sub_number", "measured_time")
REPLY_VALUE_COLUMNS = ("increment", "estimated_charge", "co2_kg")
GLOBAL_PARAM = "global"
MAX_REPORTED = 1000
_STREAM_ROWS = 20_000
_IN_CHUNK = 1000
_COMMON_QUALITY = (Quality.VALID, Quality.MISSING, Quality.VALID | Quality.RECOLLECTED)
_PURGE_STEP = {"usage_history": timedelta(hours=2), "usage_version": timedelta(days=1),
               "quote_history": timedelta(days=1)}


_QUOTES_OF_USAGE = text(
    "INSERT INTO quote_history (ld_id, sub_number, measured_time, source, corrected, updated_at) "
    "SELECT u.ld_id, u.sub_number, u.measured_time, u.source, :corrected, :now FROM usage_history u "
    "WHERE u.measured_time >= :lo AND u.measured_time < :hi ON CONFLICT DO NOTHING"
).bindparams(*(bindparam(n, type_=UTCDateTime) for n in ("lo", "hi", "now")))
"""The empty quote rows of a period's usage rows that have none (pushed reads): pseudo-billing's
first step."""


def _add_missing_quotes(s: Session, keys: list[tuple[str, int, datetime]], now: datetime) -> list[tuple[str, int, datetime]]:
    """Create the empty quote rows of those ``keys`` (without a quote row) that have a usage row;
    returns those keys."""
    u = UsageHistory
    rows = []
    for i in range(0, len(keys), _IN_CHUNK):
        chunk = keys[i:i + _IN_CHUNK]
        rows += s.execute(select(u.ld_id, u.sub_number, u.measured_time, u.source).where(
            tuple_(u.ld_id, u.sub_number, u.measured_time).in_(chunk))).all()
    if rows:
        insert_ignore(s.connection(), QuoteHistory.__table__,  # type: ignore[attr-defined]
                      [{"ld_id": ld, "sub_number": sub, "measured_time": t, "source": source, "corrected": False,
                        "updated_at": now} for ld, sub, t, source in rows])
    return [(ld, sub, t) for ld, sub, t, _ in rows]


def period_bound(value: str | date | datetime, *, end: bool = False) -> datetime:
    """A period bound from a date (a whole UTC day: the end bound is the next midnight, so the day is
    included) or an aware ISO datetime (taken as is). Naive datetimes are refused as ambiguous."""
    field_name = "to" if end else "from"
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput("bad period", [FieldError(field_name, f"not a date or ISO datetime: {value!r}")]) \
                from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput("bad period", [FieldError(field_name, "a datetime needs a time zone, e.g. Z or +09:00")])
        return value.astimezone(UTC)
    start = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def _check_period(start: datetime, end: datetime) -> None:
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise InvalidInput("bad period", [FieldError(name, "a datetime needs a time zone")])
    if end <= start:
        raise InvalidInput("bad period", [FieldError("to", "the period ends before it starts")])


@dataclass
class ExportResult:
    kind: Kind
    path: Path
    rows: int
    missing: int
    start: datetime
    end: datetime
    estimated: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "rows": self.rows, "missing": self.missing,
                "estimated": self.estimated, "from": self.start.isoformat(), "to": self.end.isoformat()}


@dataclass
class ImportReport:
    """What a quote import did; unknown keys and bad cells are listed by line (first 1000 of each)."""

    lines: int = 0
    updated: int = 0
    kept_corrected: int = 0
    unknown_count: int = 0
    error_count: int = 0
    unknown: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add_unknown(self, line: int, key: tuple[str, int, datetime]) -> None:
        self.unknown_count += 1
        if len(self.unknown) < MAX_REPORTED:
            self.unknown.append({"line": line, "ld_id": key[0], "sub_number": key[1],
                                 "measured_time": key[2].isoformat()})

    def add_error(self, line: int, column: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append({"line": line, "field": column, "message": message})

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "updated": self.updated, "kept_corrected": self.kept_corrected,
                "unknown_count": self.unknown_count, "error_count": self.error_count,
                "unknown": self.unknown, "errors": self.errors}


@dataclass(frozen=True)
class Rate:
    """Charge and CO2 per kWh of one correction parameter: coefficient x unit price, CO2 factor."""

    charge: float
    co2: float


class ParameterTable:
    """The correction parameters in memory (a supplier menu is a handful of rows), answering which
    one is valid for a parameter id at a moment and where validity changes inside a period."""

    def __init__(self, rows: Iterable[tuple[str, datetime, datetime | None, float, float, float]]) -> None:
        self._rows = sorted(rows, key=lambda r: (r[0], r[1]))

    def rate(self, param_id: str | None, at: datetime) -> Rate | None:
        """The rate of ``param_id`` valid at ``at``, else the global one, else None."""
        for pid in (param_id, GLOBAL_PARAM):
            if pid is not None and (rate := self._valid(pid, at)) is not None:
                return rate
        return None

    def rates_at(self, at: datetime) -> dict[str, Rate]:
        """Every parameter id's rate valid at ``at``."""
        return {pid: rate for pid in {r[0] for r in self._rows} if (rate := self._valid(pid, at)) is not None}

    def boundaries(self, start: datetime, end: datetime) -> list[datetime]:
        """Moments strictly inside the period where some parameter starts or stops being valid."""
        moments = {m for r in self._rows for m in (r[1], r[2]) if m is not None and start < m < end}
        return sorted(moments)

    def _valid(self, pid: str, at: datetime) -> Rate | None:
        found = None
        for param_id, valid_from, valid_to, coefficient, co2_factor, unit_price in self._rows:
            if param_id == pid and valid_from <= at and (valid_to is None or at < valid_to):
                found = Rate(coefficient * unit_price, co2_factor)  # rows are sorted: the latest start wins
        return found


def _stream_estimated(dbapi: Any, backend: str, query: dict[str, str], start: datetime, end: datetime,
                      fh: TextIO, estimates: dict[tuple[str, int, str], Snapshot],
                      include_missing: bool) -> tuple[int, int]:
    """The file with estimates (``[billing] use_estimates``): rows pass through Python, where a
    missing row the estimation rules allow gets its estimate (status ``estimated``, its flags) and
    the first actual row after estimates its restated increment. Missing rows without an estimate
    stay listed as missing (or are left out with ``include_missing`` false). Returns (rows, estimated)."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(USAGE_COLUMNS)
    rows = estimated = 0
    if backend == "postgresql":
        cur = dbapi.cursor(name="usage_export")  # server-side: memory stays flat
        params: tuple[Any, ...] = (start, end)
    else:
        cur = dbapi.cursor()
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        params = tuple(b.astimezone(UTC).replace(tzinfo=None).strftime(fmt) for b in (start, end))
    try:
        cur.execute(query[backend], params)
        while chunk := cur.fetchmany(_STREAM_ROWS):
            out = []
            for row in chunk:
                shown = estimates.get((row[0], row[1], row[2]))
                if shown is not None and shown.estimated:
                    row = (row[0], row[1], row[2], shown.register_value, shown.increment, ESTIMATED_STATUS,
                           " ".join(quality_names(shown.quality)))
                    estimated += 1
                elif shown is not None:
                    row = (*row[:4], shown.increment, row[5], " ".join(quality_names(shown.quality)) or None)
                elif row[5] == "missing" and not include_missing:
                    continue
                out.append(row)
            writer.writerows(out)
            rows += len(out)
    finally:
        cur.close()
    return rows, estimated


def _file_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usage_query(kind: Kind, include_missing: bool) -> dict[str, str]:
    """The export SELECT per backend, with CSV-ready columns: the store formats timestamps and spells
    the quality flags, so rows go from the driver to the file untouched."""
    if kind == "ONTIME":
        increment = "increment"
        wanted = "status = 'normal'"
    else:
        increment = "COALESCE(recollected_increment, increment)"
        wanted = "(status = 'recollected' OR (status = 'normal' AND recollected_increment IS NOT NULL))"
    if include_missing:
        wanted = f"({wanted} OR status = 'missing')"
    spelled = " || ".join(f"CASE WHEN (quality & {int(flag)}) <> 0 THEN '{name} ' ELSE '' END"
                          for flag, name in FLAG_NAMES.items())
    # nearly every row is valid, missing or valid+recollected: answer those with one comparison
    common = " ".join(f"WHEN {int(bits)} THEN '{' '.join(quality_names(bits))}'" for bits in _COMMON_QUALITY)
    label = f"CASE quality WHEN 0 THEN NULL {common} ELSE NULLIF(RTRIM({spelled}), '') END"
    times = {
        # SQLAlchemy stores SQLite timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, see hub.db)
        "sqlite": "substr(measured_time, 1, 10) || 'T' || substr(measured_time, 12, 8) || 'Z'",
        "postgresql": "to_char(measured_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    }
    out = {}
    for backend, param in (("sqlite", "?"), ("postgresql", "%s")):
        out[backend] = (
            f"SELECT ld_id, sub_number, {times[backend]} AS measured_time, "
            "CASE WHEN status = 'missing' THEN NULL ELSE register_value END AS register_value, "
            f"CASE WHEN status = 'missing' THEN NULL ELSE {increment} END AS increment, status, "
            f"{label} AS quality "
            f"FROM usage_history WHERE measured_time >= {param} AND measured_time < {param} "
            f"AND {wanted} ORDER BY usage_history.measured_time, ld_id, sub_number")
    return out


def _stream_sqlite(dbapi: Any, query: dict[str, str], start: datetime, end: datetime, fh: TextIO) -> int:
    """sqlite3 cursors step through the result lazily: fetchmany keeps memory flat."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    bounds = tuple(b.astimezone(UTC).replace(tzinfo=None).strftime(fmt) for b in (start, end))
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(USAGE_COLUMNS)
    rows = 0
    cur = dbapi.cursor()
    try:
        cur.execute(query["sqlite"], bounds)
        while chunk := cur.fetchmany(_STREAM_ROWS):
            writer.writerows(chunk)
            rows += len(chunk)
    finally:
        cur.close()
    return rows


def _copy_postgresql(dbapi: Any, query: dict[str, str], start: datetime, end: datetime, fh: TextIO) -> int:
    """PostgreSQL writes the CSV itself (COPY ... TO STDOUT), streamed block by block."""
    rows = 0
    with dbapi.cursor() as cur:
        with cur.copy(f"COPY ({query['postgresql']}) TO STDOUT (FORMAT csv, HEADER)", (start, end)) as copy:
            for block in copy:
                fh.write(bytes(block).decode("utf-8"))
        rows = max(cur.rowcount, 0)
    return rows


class BillingService:
    """Billing files and quotes over the usage and quote histories."""

    def __init__(self, db: Database, settings: BillingSection, export_dir: Path,
                 estimation: EstimationSection | None = None) -> None:
        self.db = db
        self.settings = settings
        self.export_dir = export_dir
        section = estimation or EstimationSection()
        self.limits = Limits(section.max_gap_slots, section.max_flat_slots)

    # -- usage export (EXPORT_USAGE) ---------------------------------------------------------------

    def default_path(self, kind: Kind, start: datetime, end: datetime) -> Path:
        stamp = f"{start:%Y%m%dT%H%MZ}_{end:%Y%m%dT%H%MZ}"
        return self.export_dir / f"usage_{kind}_{stamp}.csv"

    def export_usage(self, kind: str, start: datetime, end: datetime, path: Path | None = None, *,
                     include_missing: bool | None = None, use_estimates: bool | None = None) -> ExportResult:
        """Write the usage file of ``kind`` for ``[start, end)``; the file appears whole or not at all.

        ONTIME: rows read on schedule (status normal) with their increment. PAST: rows re-collected
        after their time (status recollected) and rows whose increment was recomputed once a gap
        before them was filled, each with the re-collected increment. Both list the rows still
        missing (empty values, status missing) unless ``include_missing`` (default: the setting) is
        false. Rows are ordered by time, then LD_ID and sub number.

        With ``use_estimates`` (default: the setting ``[billing] use_estimates``, false) missing rows
        the estimation rules allow carry their estimate instead, with status ``estimated`` and their
        ``estimated-*`` flag, and the first actual row after estimates carries the increment of its
        own slot (so the file's increments still add up to the registers' advance).
        """
        if kind not in KINDS:
            raise InvalidInput("bad export kind", [FieldError("kind", f"must be one of {', '.join(KINDS)}")])
        _check_period(start, end)
        if include_missing is None:
            include_missing = self.settings.include_missing
        if use_estimates is None:
            use_estimates = self.settings.use_estimates
        path = Path(path) if path is not None else self.default_path(kind, start, end)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        query = _usage_query(kind, include_missing or use_estimates)  # type: ignore[arg-type]
        estimated = 0
        try:
            with part.open("w", encoding="utf-8", newline="") as fh, self.db.engine.connect() as conn:
                dbapi = conn.connection.dbapi_connection
                if use_estimates:
                    with Session(bind=conn) as s:
                        shown = estimates_between(s, start, end, self.limits)
                    estimates = {(k[0], k[1], _file_time(k[2])): v for k, v in shown.items()}
                    rows, estimated = _stream_estimated(dbapi, self.db.backend, query, start, end, fh, estimates,
                                                        include_missing)
                elif self.db.backend == "postgresql":
                    rows = _copy_postgresql(dbapi, query, start, end, fh)
                else:
                    rows = _stream_sqlite(dbapi, query, start, end, fh)
                fh.flush()
                os.fsync(fh.fileno())
                missing = self._count_missing(conn, start, end) - estimated if include_missing else 0
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return ExportResult(kind, path, rows, missing, start, end, estimated)  # type: ignore[arg-type]

    @staticmethod
    def _count_missing(conn: Connection, start: datetime, end: datetime) -> int:
        stmt = text("SELECT COUNT(*) FROM usage_history WHERE status = 'missing' "
                    "AND measured_time >= :start AND measured_time < :end").bindparams(
            bindparam("start", type_=UTCDateTime), bindparam("end", type_=UTCDateTime))
        return conn.execute(stmt, {"start": start, "end": end}).scalar_one()

    # -- quote import (IMPORT_BILL) ----------------------------------------------------------------

    def import_quotes(self, lines: Iterable[str]) -> ImportReport:
        """Update quote rows from a billing system's reply (CSV with a header).

        Key columns ``ld_id, sub_number, measured_time``; value columns ``increment``,
        ``estimated_charge``, ``co2_kg`` (at least one); other columns (the export's own) are ignored,
        so a reply may be the usage file with a charge column added. Only existing rows are updated,
        never inserted; unknown keys and bad cells are reported by line. A blank value cell leaves the
        stored value as it is. Rows corrected by hand are kept and counted. A key with a usage row but
        no quote row yet (a pushed read) gets its quote row first.
        """
        report = ImportReport()
        reader = csv.reader(iter(lines))
        header = [h.strip().lower() for h in next(reader, [])]
        absent = [c for c in REPLY_KEY_COLUMNS if c not in header]
        values = [c for c in REPLY_VALUE_COLUMNS if c in header]
        if absent or not values:
            problems = [FieldError(c, "column missing from the header") for c in absent]
            if not values:
                problems.append(FieldError("header", f"needs one of {', '.join(REPLY_VALUE_COLUMNS)}"))
            raise InvalidInput("the reply file has no usable header", problems)
        index = {name: header.index(name) for name in (*REPLY_KEY_COLUMNS, *values)}
        batch: dict[tuple[str, int, datetime], tuple[int, dict[str, float | None]]] = {}
        for line_no, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            report.lines += 1
            parsed = self._reply_row(line_no, cells, index, values, report)
            if parsed is not None:
                batch[parsed[0]] = (line_no, parsed[1])
            if len(batch) >= self.settings.batch_size:
                self._apply_quotes(batch, report)
                batch = {}
        if batch:
            self._apply_quotes(batch, report)
        return report

    @staticmethod
    def _reply_row(line: int, cells: list[str], index: dict[str, int], values: list[str],
                   report: ImportReport) -> tuple[tuple[str, int, datetime], dict[str, float | None]] | None:
        def cell(name: str) -> str:
            i = index[name]
            return cells[i].strip() if i < len(cells) else ""

        errors = report.error_count
        ld_id = cell("ld_id")
        if not ld_id:
            report.add_error(line, "ld_id", "required")
        sub: int | None = None
        try:
            sub = int(cell("sub_number"))
        except ValueError:
            report.add_error(line, "sub_number", f"not an integer: {cell('sub_number')!r}")
        when: datetime | None = None
        try:
            when = datetime.fromisoformat(cell("measured_time"))
            if when.tzinfo is None:
                report.add_error(line, "measured_time", "needs a time zone (e.g. 2026-01-01T00:30:00Z)")
            when = when.astimezone(UTC) if when.tzinfo else None
        except ValueError:
            report.add_error(line, "measured_time", f"not an ISO timestamp: {cell('measured_time')!r}")
        numbers: dict[str, float | None] = {}
        for name in values:
            raw = cell(name)
            try:
                numbers[name] = float(raw) if raw else None
            except ValueError:
                report.add_error(line, name, f"not a number: {raw!r}")
        if report.error_count > errors or sub is None or when is None:
            return None
        return (ld_id, sub, when), numbers

    def _apply_quotes(self, batch: dict[tuple[str, int, datetime], tuple[int, dict[str, float | None]]],
                      report: ImportReport) -> None:
        """One transaction: find which keys exist, then one executemany UPDATE for them."""
        keys = list(batch)
        now = utcnow()
        update = text(
            "UPDATE quote_history SET increment = COALESCE(:increment, increment), "
            "estimated_charge = COALESCE(:estimated_charge, estimated_charge), co2_kg = COALESCE(:co2_kg, co2_kg), "
            "source = 'billing', updated_at = :now "
            "WHERE ld_id = :ld_id AND sub_number = :sub_number AND measured_time = :measured_time"
        ).bindparams(bindparam("now", type_=UTCDateTime), bindparam("measured_time", type_=UTCDateTime))
        with self.db.session() as s:
            found: dict[tuple[str, int, datetime], bool] = {}
            for i in range(0, len(keys), _IN_CHUNK):
                chunk = keys[i:i + _IN_CHUNK]
                q = QuoteHistory
                stmt = select(q.ld_id, q.sub_number, q.measured_time, q.corrected).where(
                    tuple_(q.ld_id, q.sub_number, q.measured_time).in_(chunk))
                for ld_id, sub, when, corrected in s.execute(stmt):
                    found[(ld_id, sub, when)] = corrected
            for key in _add_missing_quotes(s, [k for k in keys if k not in found], now):
                found[key] = False
            params = []
            for key in keys:
                line, numbers = batch[key]
                if key not in found:
                    report.add_unknown(line, key)
                elif found[key]:
                    report.kept_corrected += 1
                else:
                    params.append({"ld_id": key[0], "sub_number": key[1], "measured_time": key[2], "now": now,
                                   **{name: numbers.get(name) for name in REPLY_VALUE_COLUMNS}})
            if params:
                s.execute(update, params)
            report.updated += len(params)

    # -- pseudo-billing (SIMULATE_BILL) ------------------------------------------------------------

    def parameters(self) -> ParameterTable:
        p = CorrectionParameter
        with self.db.session() as s:
            rows = s.execute(select(p.param_id, p.valid_from, p.valid_to, p.coefficient, p.co2_factor,
                                    p.unit_price)).all()
        return ParameterTable(tuple(r) for r in rows)

    def simulate(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Price the quote rows of ``[start, end)`` when no billing system is linked.

        increment = the usage row's effective increment (re-collected when set); estimated_charge =
        increment x coefficient x unit price and co2_kg = increment x CO2 factor, with the correction
        parameter of the LD's cluster valid at the row's time, or the ``global`` one when the LD has no
        cluster (or its cluster no valid parameter). Rows without a usable parameter get no charge;
        missing rows get no increment; rows corrected by hand are left alone. One transaction per
        UTC day and per stretch where the parameters stay the same.
        """
        _check_period(start, end)
        table = self.parameters()
        cuts = set(table.boundaries(start, end))
        day = datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
        while day < end:
            cuts.add(day)
            day += timedelta(days=1)
        edges = [start, *sorted(cuts), end]
        updated = 0
        now = utcnow()
        for lo, hi in zip(edges, edges[1:], strict=False):
            updated += self._price_segment(lo, hi, table.rates_at(lo), now)
        return {"from": start.isoformat(), "to": end.isoformat(), "updated": updated}

    def _price_segment(self, lo: datetime, hi: datetime, rates: dict[str, Rate], now: datetime) -> int:
        params: dict[str, Any] = {"lo": lo, "hi": hi, "now": now}
        default = rates.get(GLOBAL_PARAM)
        params["charge_default"] = default.charge if default else None
        params["co2_default"] = default.co2 if default else None
        whens_charge, whens_co2 = [], []
        for n, (pid, rate) in enumerate(sorted(rates.items())):
            params[f"p{n}"], params[f"c{n}"], params[f"k{n}"] = pid, rate.charge, rate.co2
            whens_charge.append(f"WHEN :p{n} THEN CAST(:c{n} AS FLOAT)")
            whens_co2.append(f"WHEN :p{n} THEN CAST(:k{n} AS FLOAT)")

        def case(whens: list[str], default_name: str) -> str:
            fallback = f"CAST(:{default_name} AS FLOAT)"
            return f"(CASE s.pid {' '.join(whens)} ELSE {fallback} END)" if whens else fallback

        stmt = text(
            "UPDATE quote_history SET increment = s.inc, "
            f"estimated_charge = s.inc * {case(whens_charge, 'charge_default')}, "
            f"co2_kg = s.inc * {case(whens_co2, 'co2_default')}, source = 'simulated', updated_at = :now "
            "FROM (SELECT u.ld_id AS ld_id, u.sub_number AS sub_number, u.measured_time AS measured_time, "
            "CASE WHEN u.status = 'missing' THEN NULL ELSE COALESCE(u.recollected_increment, u.increment) END AS inc, "
            "c.param_id AS pid FROM usage_history u "
            "LEFT JOIN logical_device ld ON ld.ld_id = u.ld_id LEFT JOIN cluster c ON c.cluster_id = ld.cluster_id "
            "WHERE u.measured_time >= :lo AND u.measured_time < :hi) AS s "
            "WHERE quote_history.ld_id = s.ld_id AND quote_history.sub_number = s.sub_number "
            "AND quote_history.measured_time = s.measured_time AND quote_history.corrected = false"
        ).bindparams(*(bindparam(n, type_=UTCDateTime) for n in ("lo", "hi", "now")))
        with self.db.session() as s:
            s.execute(_QUOTES_OF_USAGE, {"lo": lo, "hi": hi, "now": now, "corrected": False})
            return s.execute(stmt, params).rowcount or 0

    # -- manual correction (CORRECT_QUOTE) ---------------------------------------------------------

    def correct(self, ld_id: str, sub_number: int, measured_time: datetime, increment: float,
                estimated_charge: float | None = None, *, author: str = "billing",
                reason: str = "manual correction (CORRECT_QUOTE)") -> dict[str, Any]:
        """Set a quote row's increment by hand (reconciliation) and mark it ``corrected``.

        The charge is ``estimated_charge`` when given, else priced like pseudo-billing. Later imports
        and pseudo-billing keep corrected rows. The raw usage row is never touched: the corrected
        increment becomes the snapshot's next usage version, flagged ``edited``, with ``author`` and
        ``reason`` (when the usage row is still kept; quotes outlive usage rows), in the same
        transaction.
        """
        if measured_time.tzinfo is None:
            raise InvalidInput("bad key", [FieldError("measured_time", "needs a time zone")])
        measured_time = measured_time.astimezone(UTC)
        with self.db.session() as s:
            row = s.get(QuoteHistory, (ld_id, sub_number, measured_time))
            if row is None and _add_missing_quotes(s, [(ld_id, sub_number, measured_time)], utcnow()):
                row = s.get(QuoteHistory, (ld_id, sub_number, measured_time))
            if row is None:
                raise NotFound(f"no quote row for {ld_id}/{sub_number} at {measured_time.isoformat()}")
            rate = None
            if estimated_charge is None:
                cluster_param = s.execute(
                    select(Cluster.param_id).join(LogicalDevice, LogicalDevice.cluster_id == Cluster.cluster_id)
                    .where(LogicalDevice.ld_id == ld_id)).scalar_one_or_none()
                rate = self.parameters().rate(cluster_param, measured_time)
            row.increment = increment
            row.estimated_charge = estimated_charge if estimated_charge is not None else (
                increment * rate.charge if rate else None)
            row.co2_kg = increment * rate.co2 if rate else row.co2_kg
            row.corrected = True
            row.source = "manual"
            row.updated_at = utcnow()
            s.add(row)
            version = None
            if s.get(UsageHistory, (ld_id, sub_number, measured_time)) is not None:
                version = add_version(s, ld_id, sub_number, measured_time, increment=increment, author=author,
                                      reason=reason, source="billing-correction").version
            return {"ld_id": row.ld_id, "sub_number": row.sub_number,
                    "measured_time": row.measured_time.isoformat(), "increment": row.increment,
                    "estimated_charge": row.estimated_charge, "co2_kg": row.co2_kg, "corrected": True,
                    "usage_version": version}

    # -- retention purge ---------------------------------------------------------------------------

    def purge(self, now: datetime | None = None) -> dict[str, Any]:
        """Delete usage rows (and their versions) and quote rows older than their retention days,
        oldest first, in batches (one transaction per slice of time, so a purge never holds one huge
        transaction)."""
        now = now or utcnow()
        out: dict[str, Any] = {}
        for table, days in (("usage_history", self.settings.usage_retention_days),
                            ("usage_version", self.settings.usage_retention_days),
                            ("quote_history", self.settings.quote_retention_days)):
            cutoff = now - timedelta(days=days)
            out[table] = {"before": cutoff.isoformat(), "deleted": self._purge(table, cutoff)}
        usage_cutoff = now - timedelta(days=self.settings.usage_retention_days)
        out["usage_rollup"] = {"before": usage_cutoff.isoformat(), "deleted": UsageRollupService(self.db).purge(usage_cutoff)}
        return out

    def _purge(self, table: str, cutoff: datetime) -> int:
        oldest = text(f"SELECT MIN(measured_time) AS measured_time FROM {table} WHERE measured_time < :cutoff").bindparams(
            bindparam("cutoff", type_=UTCDateTime)).columns(measured_time=UTCDateTime)
        delete = text(f"DELETE FROM {table} WHERE measured_time < :hi").bindparams(
            bindparam("hi", type_=UTCDateTime))
        deleted = 0
        while True:
            with self.db.session() as s:
                lo = s.execute(oldest, {"cutoff": cutoff}).scalar_one_or_none()
                if lo is None:
                    return deleted
                hi = min(lo + _PURGE_STEP[table], cutoff)
                deleted += s.execute(delete, {"hi": hi}).rowcount or 0
