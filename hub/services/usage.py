"""Reading usage history: one metering point's snapshots over a period, with status and quality."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select

from hub.db import Database
from hub.model import LogicalDevice
from hub.services.errors import NotFound
from hub.services.quality import quality_names
from hub.services.usage_writer import USAGE, utc

MAX_SPAN = timedelta(days=31)


class UsagePeriod(BaseModel):
    """A period of snapshots: ``from`` inclusive, ``to`` exclusive, aware ISO 8601 times, at most 31 days."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: AwareDatetime = Field(alias="from", description="first snapshot time (inclusive), with a time zone")
    to: AwareDatetime = Field(description="end of the period (exclusive), with a time zone")
    sub_number: int | None = Field(None, ge=0, le=65535, description="one register only")

    @model_validator(mode="after")
    def _span(self) -> UsagePeriod:
        if self.to <= self.from_:
            raise ValueError("to must be after from")
        if self.to - self.from_ > MAX_SPAN:
            raise ValueError(f"the period may span at most {MAX_SPAN.days} days")
        return self


def usage_item(ld_id: str, sub: int, t: Any, value: float | None, inc: float | None, status: str,
               rinc: float | None, quality: int, source: str | None) -> dict[str, Any]:
    text = t.isoformat()
    return {"ld_id": ld_id, "sub_number": sub, "measured_time": text[:-6] + "Z" if text.endswith("+00:00") else text,
            "register_value": value, "increment": inc, "status": status, "recollected_increment": rinc,
            "quality": quality_names(quality), "source": source}


class UsageService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def usage(self, ld_id: str, period: UsagePeriod, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Rows of ``ld_id`` in the period, by time then register; 404 for an LD_ID that is neither
        a logical device's nor in the history (history outlives an installation)."""
        c = USAGE.c
        conds = [c.ld_id == ld_id, c.measured_time >= utc(period.from_), c.measured_time < utc(period.to)]
        if period.sub_number is not None:
            conds.append(c.sub_number == period.sub_number)
        with self.db.session() as s:
            known = s.execute(select(LogicalDevice.id).where(LogicalDevice.ld_id == ld_id)).first() \
                or s.execute(select(c.ld_id).where(c.ld_id == ld_id).limit(1)).first()
            if not known:
                raise NotFound.on("ld_id", f"logical device {ld_id} does not exist")
            total = s.execute(select(func.count()).select_from(USAGE).where(*conds)).scalar_one()
            rows = s.execute(select(c.ld_id, c.sub_number, c.measured_time, c.register_value, c.increment, c.status,
                                    c.recollected_increment, c.quality, c.source)
                             .where(*conds).order_by(c.measured_time, c.sub_number).limit(limit).offset(offset))
            return [usage_item(*row) for row in rows], total
