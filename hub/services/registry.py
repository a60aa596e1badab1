"""Device registration from asset management: one physical device, its comms row and its first
logical device per record, alone or in bulk (CSV or JSON).

Bulk imports validate every row, report bad rows by line and field, and store the valid ones with
set-based inserts in batches; each batch is one transaction, so a crash leaves whole batches or
nothing, never a device without its comms row. ``atomic=True`` stores everything or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import String, any_, bindparam, insert, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from hub.config import RegistrySection
from hub.db import Database, utcnow
from hub.model import (
    Cluster,
    Concentrator,
    HeadEnd,
    LogicalDevice,
    LogicalDeviceType,
    PhysicalDevice,
    PhysicalDeviceComms,
    PhysicalDeviceType,
)
from hub.services.admin import device_counts
from hub.services.assignment import strategy
from hub.services.errors import Conflict, FieldError, InvalidInput
from hub.services.usage_rollup import bump_generation
from hub.services.validation import BusinessKey, DeviceId, MacAddress

MAX_REPORTED_ERRORS = 1000
_IN_CHUNK = 500  # values per IN (...) lookup; well under every backend's parameter limit


class DeviceRegistration(BaseModel):
    """One record of the registration file: a physical device, its comms settings and its first
    logical device. Blank values take the seed's defaults."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    type_id: int = Field(description="physical device type (required)")
    ld_type_id: int = Field(description="logical device type (required)")
    pd_id: DeviceId | None = Field(None, description="PD_ID, usually set at installation")
    co_id: DeviceId | None = Field(None, description="concentrator; default: the assigned head-end's holding one")
    he_id: int | None = Field(None, description="head-end; default: chosen by the assignment strategy")
    serial: str | None = Field(None, max_length=64)
    mac: MacAddress | None = None
    name: str | None = Field(None, max_length=128)
    config_state: int = Field(0, ge=0, le=1, description="0 do not poll, 1 poll")
    ip: str | None = Field(None, max_length=45)
    port: int | None = Field(None, ge=1, le=65535)
    cert_serial: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=128)
    ld_id: BusinessKey | None = Field(None, description="LD_ID, usually set at installation")
    cluster_id: BusinessKey | None = None
    ld_name: str | None = Field(None, max_length=128)
    ld_address: int = Field(2, ge=1, le=65535)
    contract_amps: int = Field(0, ge=0, le=10_000)
    relay_state: int = Field(1, ge=0, le=1, description="1 supply on, 0 supply off")

    @model_validator(mode="before")
    @classmethod
    def _blank_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None or (isinstance(v, str) and not v.strip()))}
        return data


CSV_COLUMNS = tuple(DeviceRegistration.model_fields)


@dataclass
class ImportReport:
    """What an import did: counts, the first errors by line (CSV) or item number (JSON)."""

    rows: int = 0
    stored: int = 0
    failed: int = 0
    batches_committed: int = 0
    atomic: bool = False
    errors: list[FieldError] = field(default_factory=list)
    errors_truncated: bool = False
    assigned: dict[int, int] = field(default_factory=dict)

    def add_error(self, err: FieldError) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)
        else:
            self.errors_truncated = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "stored": self.stored, "failed": self.failed, "atomic": self.atomic,
            "batches_committed": self.batches_committed,
            "assigned_per_head_end": {str(k): v for k, v in sorted(self.assigned.items())},
            "errors": [{k: v for k, v in e.__dict__.items() if v is not None}
                       for e in sorted(self.errors, key=lambda e: e.line or 0)],
            "errors_truncated": self.errors_truncated,
        }


Row = tuple[int, dict[str, Any]]  # (line or item number, raw values)


def csv_rows(text: Iterable[str]) -> Iterator[Row]:
    """Rows of a registration CSV with their line numbers (the header is line 1)."""
    reader = csv.DictReader(text)
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if not header:
        raise InvalidInput.on("file", "the CSV file is empty: expected a header line")
    if unknown:
        raise InvalidInput(f"unknown CSV columns: {', '.join(unknown)}",
                           [FieldError(c, "unknown column", line=1) for c in unknown])
    missing = [c for c in ("type_id", "ld_type_id") if c not in header]
    if missing:
        raise InvalidInput(f"required CSV columns missing: {', '.join(missing)}",
                           [FieldError(c, "required column missing", line=1) for c in missing])
    for raw in reader:
        if None in raw:  # more cells than header columns
            yield reader.line_num, {"__extra__": raw.pop(None)} | raw
        else:
            yield reader.line_num, raw


def json_rows(data: Any) -> Iterator[Row]:
    """Items of a JSON registration document: a list, or an object with a ``devices`` list."""
    items = data.get("devices") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InvalidInput.on("devices", "expected a JSON array of devices or {\"devices\": [...]}")
    for number, item in enumerate(items, start=1):
        yield number, item if isinstance(item, dict) else {"__item__": item}


class _Catalog:
    """Reference data looked up once per import: types, concentrators, clusters, head-ends."""

    def __init__(self, s: Session) -> None:
        self.pd_types = set(s.scalars(select(PhysicalDeviceType.type_id)))
        self.ld_types = set(s.scalars(select(LogicalDeviceType.type_id)))
        self.clusters = set(s.scalars(select(Cluster.cluster_id)))
        self.capacities = {he: cap for he, cap in s.execute(select(HeadEnd.he_id, HeadEnd.capacity))}
        self.concentrators: dict[str, tuple[int, int]] = {}
        self.holding: dict[int, int] = {}
        for cid, co_id, he_id, dummy in s.execute(
                select(Concentrator.id, Concentrator.co_id, Concentrator.he_id, Concentrator.is_dummy)
                .where(Concentrator.deleted == False)):  # noqa: E712
            if co_id:
                self.concentrators[co_id] = (cid, he_id)
            if dummy:
                self.holding[he_id] = cid
        self.loads = device_counts(s)


class RegistryService:
    def __init__(self, db: Database, settings: RegistrySection) -> None:
        self.db = db
        self.settings = settings

    # public API ----------------------------------------------------------------------------------
    def register(self, record: DeviceRegistration) -> dict[str, Any]:
        """Register one device; every problem is raised, nothing is stored on error."""
        from hub.services.devices import physical_device_view

        report = ImportReport(atomic=True)
        with self.db.session() as s:
            prepared = self._prepare(s, [(1, record.model_dump(exclude_unset=True))], _Catalog(s),
                                     {k: set() for k in _UNIQUE_KEYS}, strategy(self.settings.assignment), report)
            if report.errors:
                raise _as_error(report.errors)
            (key,) = _insert(s, prepared, utcnow())
            return physical_device_view(s, key)

    def import_csv(self, text: Iterable[str] | str, *, atomic: bool = False,
                   progress: Callable[[int], None] | None = None) -> ImportReport:
        lines = io.StringIO(text) if isinstance(text, str) else text
        return self.import_rows(csv_rows(lines), atomic=atomic, progress=progress)

    def import_json(self, data: Any, *, atomic: bool = False,
                    progress: Callable[[int], None] | None = None) -> ImportReport:
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise InvalidInput.on("body", f"malformed JSON: {exc}") from None
        return self.import_rows(json_rows(data), atomic=atomic, progress=progress)

    def import_rows(self, rows: Iterator[Row], *, atomic: bool = False,
                    progress: Callable[[int], None] | None = None) -> ImportReport:
        report = ImportReport(atomic=atomic)
        size = self.settings.import_batch_size
        assign = strategy(self.settings.assignment)
        if atomic:
            # Validate everything first (against one consistent view), store only when clean.
            with self.db.session() as s:
                catalog = _Catalog(s)
                seen: dict[str, set[str]] = {k: set() for k in _UNIQUE_KEYS}
                prepared: list[_Prepared] = []
                for batch in _batches(rows, size):
                    prepared += self._prepare(s, batch, catalog, seen, assign, report)
                    if progress:
                        progress(len(batch))
                if report.failed:
                    s.rollback()
                    return report
                for chunk in _chunks(prepared, size):
                    _insert(s, chunk, utcnow())
                report.stored = len(prepared)
                report.batches_committed = 1 if prepared else 0
            return report

        with self.db.session() as s:
            catalog = _Catalog(s)
        seen = {k: set() for k in _UNIQUE_KEYS}
        for batch in _batches(rows, size):
            with self.db.session() as s:
                prepared = self._prepare(s, batch, catalog, seen, assign, report)
                if prepared:
                    _insert(s, prepared, utcnow())
            report.stored += len(prepared)
            report.batches_committed += 1 if prepared else 0
            if progress:
                progress(len(batch))
        return report

    # internals -----------------------------------------------------------------------------------
    def _prepare(self, s: Session, batch: list[Row], catalog: _Catalog, seen: dict[str, set[str]],
                 assign: Any, report: ImportReport) -> list[_Prepared]:
        report.rows += len(batch)
        valid: list[tuple[int, DeviceRegistration]] = []
        for line, raw in batch:
            try:
                if "__extra__" in raw:
                    raise _RowError("row", "more cells than header columns")
                if "__item__" in raw:
                    raise _RowError("item", "each device must be a JSON object")
                valid.append((line, DeviceRegistration.model_validate(raw)))
            except ValidationError as exc:
                report.failed += 1
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"]) or "row"
                    report.add_error(FieldError(loc, err["msg"], line=line))
            except _RowError as exc:
                report.failed += 1
                report.add_error(FieldError(exc.field, exc.message, line=line))

        taken = _taken_keys(s, [rec for _, rec in valid])
        out: list[_Prepared] = []
        for line, rec in valid:
            problem = self._check(rec, catalog, seen, taken)
            conc: tuple[int, int] | None = None
            if problem is None:
                conc = self._place(rec, catalog, assign)
                if conc is None:
                    problem = ("he_id", "no head-end has capacity left" if rec.he_id is None and rec.co_id is None
                               else f"head-end {rec.he_id} is full")
            if problem is not None:
                report.failed += 1
                report.add_error(FieldError(problem[0], problem[1], line=line))
                continue
            for key in _UNIQUE_KEYS:
                value = getattr(rec, key)
                if value is not None:
                    seen[key].add(value)
            concentrator_key, he_id = conc
            catalog.loads[he_id] = catalog.loads.get(he_id, 0) + 1
            report.assigned[he_id] = report.assigned.get(he_id, 0) + 1
            out.append(_Prepared(rec, concentrator_key))
        return out

    @staticmethod
    def _check(rec: DeviceRegistration, catalog: _Catalog, seen: dict[str, set[str]],
               taken: dict[str, set[str]]) -> tuple[str, str] | None:
        if rec.type_id not in catalog.pd_types:
            return "type_id", f"unknown physical device type {rec.type_id}"
        if rec.ld_type_id not in catalog.ld_types:
            return "ld_type_id", f"unknown logical device type {rec.ld_type_id}"
        if rec.cluster_id is not None and rec.cluster_id not in catalog.clusters:
            return "cluster_id", f"unknown cluster {rec.cluster_id}"
        if rec.co_id is not None and rec.co_id not in catalog.concentrators:
            return "co_id", f"unknown concentrator {rec.co_id}"
        if rec.he_id is not None and rec.he_id not in catalog.capacities:
            return "he_id", f"unknown head-end {rec.he_id}"
        if rec.co_id is not None and rec.he_id is not None and catalog.concentrators[rec.co_id][1] != rec.he_id:
            return "co_id", f"concentrator {rec.co_id} belongs to head-end {catalog.concentrators[rec.co_id][1]}"
        for key in _UNIQUE_KEYS:
            value = getattr(rec, key)
            if value is None:
                continue
            if value in taken[key]:
                return key, f"{key} {value} is already registered"
            if value in seen[key]:
                return key, f"{key} {value} appears more than once in this import"
        return None

    @staticmethod
    def _place(rec: DeviceRegistration, catalog: _Catalog, assign: Any) -> tuple[int, int] | None:
        """(concentrator key, HEID) for the record, or None when the head-end is full."""
        if rec.co_id is not None:
            return catalog.concentrators[rec.co_id]
        he_id = rec.he_id
        if he_id is None:
            he_id = assign.choose(catalog.loads, catalog.capacities)
            if he_id is None:
                return None
        elif catalog.loads.get(he_id, 0) >= catalog.capacities[he_id]:
            return None
        holding = catalog.holding.get(he_id)
        return None if holding is None else (holding, he_id)


class _RowError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field_name, message


@dataclass
class _Prepared:
    rec: DeviceRegistration
    concentrator_key: int


_UNIQUE_KEYS = ("mac", "serial", "pd_id", "ld_id")
_UNIQUE_COLUMNS = {
    "mac": PhysicalDevice.mac, "serial": PhysicalDevice.serial,
    "pd_id": PhysicalDevice.pd_id, "ld_id": LogicalDevice.ld_id,
}


def _taken_keys(s: Session, records: list[DeviceRegistration]) -> dict[str, set[str]]:
    """Which of the batch's unique values are already stored: one query per key (PostgreSQL binds
    them as one array; elsewhere chunks of IN lists)."""
    taken: dict[str, set[str]] = {}
    postgres = s.get_bind().dialect.name == "postgresql"
    for key, column in _UNIQUE_COLUMNS.items():
        values = list({getattr(r, key) for r in records if getattr(r, key) is not None})
        found: set[str] = set()
        if values and postgres:
            found.update(s.scalars(select(column).where(column == any_(bindparam("v", values, type_=ARRAY(String))))))
        else:
            for chunk in _chunks(values, _IN_CHUNK):
                found.update(s.scalars(select(column).where(column.in_(chunk))))
        taken[key] = found
    return taken


def _rows(prepared: list[_Prepared], keys: list[int], now: datetime) -> tuple[list[dict[str, Any]], ...]:
    """The three tables' rows for a batch, keyed by the physical devices' table keys."""
    pd_rows, comms_rows, ld_rows = [], [], []
    for key, p in zip(keys, prepared, strict=True):
        rec = p.rec
        pd_rows.append({
            "id": key, "pd_id": rec.pd_id, "concentrator_id": p.concentrator_key, "type_id": rec.type_id,
            "serial": rec.serial, "mac": rec.mac, "name": rec.name, "config_state": rec.config_state,
            "installed_at": None, "deleted": False, "deleted_at": None, "created_at": now, "updated_at": now})
        comms_rows.append({
            "physical_device_id": key, "ip": rec.ip, "port": rec.port, "cert_serial": rec.cert_serial,
            "password": rec.password, "common_key": None, "session_key": None, "use_state": "N",
            "dhcp_done": False, "provisioned": False, "key_updated_at": None, "collection_start_at": None,
            "collection_stop_at": None, "updated_at": now})
        ld_rows.append({
            "ld_id": rec.ld_id, "physical_device_id": key, "ld_address": rec.ld_address,
            "type_id": rec.ld_type_id, "cluster_id": rec.cluster_id, "name": rec.ld_name,
            "contract_amps": rec.contract_amps, "relay_state": rec.relay_state,
            "installed_at": now if rec.ld_id else None, "deleted": False, "deleted_at": None,
            "created_at": now, "updated_at": now})
    return pd_rows, comms_rows, ld_rows


def _insert(s: Session, prepared: list[_Prepared], now: datetime) -> list[int]:
    """Set-based insert of devices, comms rows and logical devices in the caller's transaction.

    PostgreSQL takes the table keys from the sequence up front and streams the rows with COPY (the
    generic multi-row INSERT ... RETURNING costs several times more CPU there); other backends use
    one multi-row INSERT per table, the devices' keys coming back with RETURNING.
    """
    if s.get_bind().dialect.name == "postgresql":
        return _copy_postgresql(s, prepared, now)
    pd_rows = [{k: v for k, v in row.items() if k != "id"} for row in _rows(prepared, [0] * len(prepared), now)[0]]
    keys = list(s.scalars(insert(PhysicalDevice).returning(PhysicalDevice.id, sort_by_parameter_order=True),
                          pd_rows).all())
    _, comms_rows, ld_rows = _rows(prepared, keys, now)
    s.execute(insert(PhysicalDeviceComms), comms_rows)
    s.execute(insert(LogicalDevice), ld_rows)
    return keys


def _copy_postgresql(s: Session, prepared: list[_Prepared], now: datetime) -> list[int]:
    keys = list(s.scalars(text(
        "SELECT nextval(pg_get_serial_sequence('physical_device', 'id')) FROM generate_series(1, :n)"),
        {"n": len(prepared)}))
    cursor = s.connection().connection.driver_connection.cursor()
    for table, rows in zip(("physical_device", "physical_device_comms", "logical_device"),
                           _rows(prepared, keys, now), strict=True):
        columns = list(rows[0])
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(tuple(row.values()))
        if table == "logical_device" and any(row.get("cluster_id") for row in rows):
            bump_generation(s.connection())  # COPY bypasses the session events that do it otherwise
    return keys


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _as_error(errors: list[FieldError]) -> Exception:
    """One registration's errors as the service error an edge renders (409 for clashes, else 422)."""
    for err in errors:
        err.line = None
    cls = Conflict if any("already registered" in e.message for e in errors) else InvalidInput
    return cls(errors[0].message, errors)
