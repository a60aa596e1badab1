"""Versions of usage snapshots: an edit is a new version with its flag, the raw row stays as read.

Version 0 of a snapshot is its row in ``usage_history``, written only by collection. An edit (by
hand through the API, or a billing correction) adds version n+1 to ``usage_version`` with the
values it sets, the other values carried over from version n, the flag ``edited``, who, why and
when. Readers see the highest version unless they ask for the raw one.

Flags of an edit: the origin flags of the snapshot stay (``valid``, ``missing``, ``recollected``,
``expired``: what was read, or not, and when); ``edited`` is added; ``questionable`` is dropped (an
edit is the reviewed value); ``negative-increment`` follows the edited increment; the flags about
how a stored increment was computed (``spans-gap``, ``recalculated``) are dropped, since the
increment is now whatever the editor set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.db import utcnow
from hub.model import UsageHistory, UsageVersion
from hub.services.errors import Conflict, NotFound
from hub.services.quality import Quality, quality_names

_ORIGIN = Quality.VALID | Quality.MISSING | Quality.RECOLLECTED | Quality.EXPIRED
UNCHANGED: Any = object()
"""Marks a value an edit leaves as the previous version had it."""


@dataclass(frozen=True, slots=True)
class Version:
    """A stored edit, as readers overlay it on the raw row."""

    version: int
    register_value: float | None
    increment: float | None
    quality: int
    source: str
    author: str
    reason: str
    created_at: datetime


def edit_quality(previous: int, increment: float | None) -> int:
    """Flags of a new version whose predecessor had ``previous`` (see the module docstring)."""
    flags = (Quality(previous) & _ORIGIN) | Quality.EDITED
    if increment is not None and increment < 0:
        flags |= Quality.NEGATIVE_INCREMENT
    return int(flags)


def latest_versions(s: Session, ld_id: str, lo: datetime, hi: datetime,
                    sub_number: int | None = None) -> dict[tuple[int, datetime], Version]:
    """The highest version of every edited snapshot of ``ld_id`` in ``[lo, hi)``, by (sub, time)."""
    v = UsageVersion
    conds = [v.ld_id == ld_id, v.measured_time >= lo, v.measured_time < hi]
    if sub_number is not None:
        conds.append(v.sub_number == sub_number)
    out: dict[tuple[int, datetime], Version] = {}
    for row in s.scalars(select(v).where(*conds).order_by(v.sub_number, v.measured_time, v.version)):
        out[(row.sub_number, row.measured_time)] = _version(row)
    return out


def _version(row: UsageVersion) -> Version:
    return Version(row.version, row.register_value, row.increment, row.quality, row.source, row.author,
                   row.reason, row.created_at)


def add_version(s: Session, ld_id: str, sub_number: int, measured_time: datetime, *, author: str, reason: str,
                source: str = "manual", register_value: float | None = UNCHANGED,
                increment: float | None = UNCHANGED) -> Version:
    """Store the next version of a snapshot in the caller's transaction; 404 when the snapshot has no
    usage row (nothing was expected then), 409 when another edit of it won the race."""
    raw = s.get(UsageHistory, (ld_id, sub_number, measured_time))
    if raw is None:
        raise NotFound(f"no usage snapshot of {ld_id} register {sub_number} at {measured_time.isoformat()}")
    v = UsageVersion
    current = s.scalars(select(v).where(v.ld_id == ld_id, v.sub_number == sub_number,
                                        v.measured_time == measured_time)
                        .order_by(v.version.desc()).limit(1)).first()
    if current is not None:
        base_value, base_increment, base_quality, number = (current.register_value, current.increment,
                                                             current.quality, current.version)
    else:
        effective = raw.recollected_increment if raw.recollected_increment is not None else raw.increment
        base_value, base_increment, base_quality, number = raw.register_value, effective, raw.quality, 0
    value = base_value if register_value is UNCHANGED else register_value
    inc = base_increment if increment is UNCHANGED else increment
    row = UsageVersion(ld_id=ld_id, sub_number=sub_number, measured_time=measured_time, version=number + 1,
                       register_value=value, increment=inc, quality=edit_quality(base_quality, inc),
                       author=author, reason=reason, source=source, created_at=utcnow())
    s.add(row)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict.on("version", f"{ld_id} register {sub_number} at {measured_time.isoformat()} was edited "
                          "at the same moment; read it again and retry") from None
    return _version(row)


def history(s: Session, ld_id: str, sub_number: int, measured_time: datetime) -> list[dict[str, Any]]:
    """Every version of one snapshot, raw (0) first; 404 when it has no usage row."""
    raw = s.get(UsageHistory, (ld_id, sub_number, measured_time))
    if raw is None:
        raise NotFound(f"no usage snapshot of {ld_id} register {sub_number} at {measured_time.isoformat()}")
    out = [{"version": 0, "register_value": raw.register_value, "increment": raw.increment,
            "recollected_increment": raw.recollected_increment, "status": raw.status,
            "quality": quality_names(raw.quality), "source": raw.source, "author": None, "reason": None,
            "created_at": iso(raw.updated_at)}]
    v = UsageVersion
    for row in s.scalars(select(v).where(v.ld_id == ld_id, v.sub_number == sub_number,
                                         v.measured_time == measured_time).order_by(v.version)):
        out.append({"version": row.version, "register_value": row.register_value, "increment": row.increment,
                    "recollected_increment": None, "status": raw.status, "quality": quality_names(row.quality),
                    "source": row.source, "author": row.author, "reason": row.reason,
                    "created_at": iso(row.created_at)})
    return out


def iso(t: datetime) -> str:
    """ISO 8601 with ``Z`` for UTC, as every usage response spells times."""
    text = t.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
