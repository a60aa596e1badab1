"""Daily CSV delivery (seed 000): one file per customer or delivery group and local day with the
30-minute energy of its metering points, a SHA-256 beside each file, a manifest per caller, and
retention (``[delivery] retention_days``, 45 by default).

Files are written whole (temporary file, then rename), so a reader never sees half a file. A file is
made on first request for a finished day if the daily run has not made it yet.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from hub.config import DeliverySection, PrivacySection
from hub.db import Database, utcnow
from hub.model import CustomerLogicalDevice, DeliveryGroup, UsageHistory
from hub.services.access import Caller, Forbidden
from hub.services.errors import InvalidInput, NotFound
from hub.services.public import _effective, _held, iso

SCOPE = "delivery:read"
KINDS = ("customer", "group")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COLUMNS = ["customer_id", "ld_id", "slot_end", "energy_kwh", "status"]


class DeliveryService:
    def __init__(self, db: Database, settings: DeliverySection, privacy: PrivacySection, data_dir: Path,
                 clock: Any = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.root = settings.dir or data_dir / "delivery"
        self.tz = ZoneInfo(privacy.timezone)
        self.clock = clock

    # --- rights -------------------------------------------------------------------------------
    @staticmethod
    def subjects_of(caller: Caller) -> list[tuple[str, str]]:
        caller.require(SCOPE)
        return sorted([("customer", c) for c in caller.customer_ids] + [("group", g) for g in caller.delivery_groups])

    def _check(self, caller: Caller, kind: str, subject: str) -> None:
        if kind not in KINDS or not SAFE_ID.match(subject):
            raise NotFound.on("subject", "no such delivery subject")
        if (kind, subject) not in self.subjects_of(caller):
            raise Forbidden("this client may not fetch that subject's files")

    def groups(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [{"group_id": g.group_id, "name": g.name, "customer_ids": g.customer_ids}
                    for g in s.scalars(select(DeliveryGroup).order_by(DeliveryGroup.group_id))]

    def put_group(self, group_id: str, name: str | None, customer_ids: list[str]) -> dict[str, Any]:
        if not SAFE_ID.match(group_id):
            raise InvalidInput.on("group_id", "letters, digits, '.', '_' and '-' only (1-64)")
        with self.db.session() as s:
            row = s.get(DeliveryGroup, group_id) or DeliveryGroup(group_id=group_id)
            row.name, row.customer_ids = name, sorted(set(customer_ids))
            s.add(row)
        return {"group_id": group_id, "name": name, "customer_ids": sorted(set(customer_ids))}

    # --- files --------------------------------------------------------------------------------
    def _path(self, kind: str, subject: str, day: date) -> Path:
        return self.root / kind / subject / f"{day.isoformat()}.csv"

    def _customers(self, kind: str, subject: str) -> list[str]:
        if kind == "customer":
            return [subject]
        with self.db.session() as s:
            group = s.get(DeliveryGroup, subject)
            return list(group.customer_ids) if group else []

    def today(self) -> date:
        return self.clock().astimezone(self.tz).date()

    def _window(self, day: date) -> tuple[datetime, datetime]:
        if day >= self.today():
            raise InvalidInput.on("day", "a day's file is made once the day is over")
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)

    @staticmethod
    def _day_rows(lo: datetime, hi: datetime, customers: list[str] | None) -> Any:
        """The rows of a day's files, ordered by customer, point and slot (of ``customers``, or of
        every customer with ``None``)."""
        u, r = UsageHistory, CustomerLogicalDevice
        stmt = select(r.customer_id, u.ld_id, u.measured_time, _effective(), u.status).select_from(u) \
            .join(r, _held()).where(u.sub_number == 1, u.measured_time > lo, u.measured_time <= hi)
        if customers is not None:
            stmt = stmt.where(r.customer_id.in_(customers))
        return stmt.distinct().order_by(r.customer_id, u.ld_id, u.measured_time)

    def generate(self, kind: str, subject: str, day: date) -> dict[str, Any]:
        """Write (or rewrite) one day's file and its checksum; re-collected values are included as
        they are at the time of writing."""
        lo, hi = self._window(day)
        with self.db.session() as s:
            rows = s.execute(self._day_rows(lo, hi, self._customers(kind, subject))).all()
        return self._store(kind, subject, day, _render(rows))

    def _store(self, kind: str, subject: str, day: date, data: bytes) -> dict[str, Any]:
        path = self._path(kind, subject, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        sidecar = path.with_name(path.name + ".sha256")
        sidecar.write_text(f"{digest}  {path.name}\n")
        return self._entry(kind, subject, day, path)

    def generate_day(self, day: date, missing_only: bool = False) -> list[dict[str, Any]]:
        """The daily run: every customer with a metering point, and every delivery group (with
        ``missing_only``, files already made are kept as they are and not returned).

        One ordered pass over the day's rows, written customer by customer as it streams (not a
        query per customer: a fleet has tens of thousands); only the rows of customers in a delivery
        group are held until the groups' files are written."""
        lo, hi = self._window(day)
        with self.db.session() as s:
            customers = sorted(set(s.scalars(select(CustomerLogicalDevice.customer_id).where(
                CustomerLogicalDevice.deleted.is_(False)))))
            groups = {g.group_id: sorted(set(g.customer_ids)) for g in s.scalars(select(DeliveryGroup))}
        todo = {c for c in customers if SAFE_ID.match(c) and not (missing_only and self._path("customer", c, day).exists())}
        todo_groups = {g: members for g, members in sorted(groups.items())
                       if not (missing_only and self._path("group", g, day).exists())}
        in_groups = {c for members in todo_groups.values() for c in members}
        held: dict[str, list[Any]] = {}
        made: list[dict[str, Any]] = []

        def finish(customer: str, rows: list[Any]) -> None:
            if customer in todo:
                made.append(self._store("customer", customer, day, _render(rows)))
                todo.discard(customer)
            if customer in in_groups:
                held[customer] = rows

        if todo or todo_groups:
            current: str | None = None
            rows: list[Any] = []
            with self.db.session() as s:
                for row in s.execute(self._day_rows(lo, hi, None)):
                    if row[0] != current:
                        if current is not None:
                            finish(current, rows)
                        current, rows = row[0], []
                    rows.append(row)
            if current is not None:
                finish(current, rows)
        for customer in sorted(todo):  # customers with no rows that day get a file with the header only
            made.append(self._store("customer", customer, day, _render([])))
        for group, members in todo_groups.items():
            made.append(self._store("group", group, day, _render([r for c in members for r in held.get(c, [])])))
        return made

    def _entry(self, kind: str, subject: str, day: date, path: Path) -> dict[str, Any]:
        sidecar = path.with_name(path.name + ".sha256")
        digest = sidecar.read_text().split()[0] if sidecar.exists() else _sha256_file(path)
        with path.open("rb") as fh:
            lines = sum(1 for _ in fh)
        return {"kind": kind, "subject": subject, "day": day.isoformat(), "name": path.name,
                "bytes": path.stat().st_size, "rows": max(0, lines - 1), "sha256": digest,
                "path": f"{kind}/{subject}/{path.name}"}

    def manifest(self, caller: Caller, since: date | None = None) -> dict[str, Any]:
        """Every file the caller may fetch (newest day first), with sizes and checksums."""
        files = []
        oldest = self.today() - timedelta(days=self.settings.retention_days)
        for kind, subject in self.subjects_of(caller):
            folder = self.root / kind / subject
            if not SAFE_ID.match(subject) or not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.csv"), reverse=True):
                try:
                    day = date.fromisoformat(path.stem)
                except ValueError:
                    continue
                if day >= oldest and (since is None or day >= since):
                    files.append(self._entry(kind, subject, day, path))
        return {"retention_days": self.settings.retention_days, "files": files}

    def fetch(self, caller: Caller, kind: str, subject: str, day: date) -> dict[str, Any]:
        """The file's path and entry, made now if the day is over and it is missing."""
        self._check(caller, kind, subject)
        if day < self.today() - timedelta(days=self.settings.retention_days):
            raise NotFound.on("day", "files are kept for {} days".format(self.settings.retention_days))
        path = self._path(kind, subject, day)
        if not path.exists():
            if day >= self.today():
                raise NotFound.on("day", "the day is not over yet")
            self.generate(kind, subject, day)
        return {**self._entry(kind, subject, day, path), "file": str(path)}

    def purge(self) -> int:
        """Delete files past retention; returns how many files went."""
        oldest = self.today() - timedelta(days=self.settings.retention_days)
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in self.root.glob("*/*/*.csv"):
            try:
                day = date.fromisoformat(path.stem)
            except ValueError:
                continue
            if day < oldest:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)
                removed += 1
        for folder in self.root.glob("*/*"):
            if folder.is_dir() and not any(folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        return removed


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _render(rows: Any) -> bytes:
    """A day's CSV: the header, then one line per (customer, point, slot) row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for customer_id, ld_id, t, energy, status in rows:
        writer.writerow([customer_id, ld_id, iso(t), "" if energy is None else f"{energy:.6f}", status])
    return buf.getvalue().encode()
