"""Policy assistance from history: how much current a metering point really draws, by time of day,
and the reduced capacity that would have held on a chosen share of past days.

Source: the usage history's max-current register (sub number 2 in the demo catalogue: the highest
current in the 30 minutes before each snapshot). A snapshot at time t covers the slot ending at t, so
it is binned by the slot's start in ``[openadr] policy_timezone``. The suggestion for ``percent`` P
over the hours [hour_from, hour_to): take each past day's highest current within those hours; the
suggested capacity is the smallest whole ampere at or above the P-th percentile of those day maxima
(nearest-rank), i.e. a cut to it would not have tripped the breaker on at least P% of the days.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from hub.db import Database
from hub.model import UsageHistory
from hub.services.errors import InvalidInput

MAX_CURRENT_SUB = 2
SLOT = timedelta(minutes=30)


def nearest_rank(values: list[float], percent: float) -> float:
    """The P-th percentile by nearest rank (a value that was really observed)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


class AssistService:
    def __init__(self, db: Database, tz: ZoneInfo) -> None:
        self.db = db
        self.tz = tz

    def assistance(self, ld_id: str, *, now: datetime, days: int = 30, percent: float = 90.0,
                   hour_from: int = 0, hour_to: int = 24, sub_number: int = MAX_CURRENT_SUB) -> dict[str, Any]:
        if not 1 <= days <= 366 or not 0 < percent <= 100 or not 0 <= hour_from < hour_to <= 24:
            raise InvalidInput("days must be 1-366, percent in (0, 100], 0 <= hour_from < hour_to <= 24")
        since = now - timedelta(days=days)
        with self.db.session() as s:
            rows = s.execute(select(UsageHistory.measured_time, UsageHistory.register_value)
                             .where(UsageHistory.ld_id == ld_id, UsageHistory.sub_number == sub_number,
                                    UsageHistory.measured_time > since, UsageHistory.measured_time <= now,
                                    UsageHistory.status != "missing", UsageHistory.register_value.is_not(None))
                             .order_by(UsageHistory.measured_time)).all()
        by_slot: dict[str, list[float]] = defaultdict(list)
        day_max: dict[str, float] = {}
        for measured, value in rows:
            start = (measured - SLOT).astimezone(self.tz)
            by_slot[start.strftime("%H:%M")].append(float(value))
            if hour_from <= start.hour < hour_to:
                day = start.date().isoformat()
                day_max[day] = max(day_max.get(day, 0.0), float(value))
        profile = [{"slot": slot, "samples": len(v), "p50": nearest_rank(v, 50), "p90": nearest_rank(v, 90),
                    "max": max(v)} for slot, v in sorted(by_slot.items())]
        suggestion = None
        if day_max:
            level = nearest_rank(list(day_max.values()), percent)
            amps = max(1, math.ceil(level - 1e-9))
            held = sum(1 for v in day_max.values() if v <= amps)
            suggestion = {"amps": amps, "percent": percent, "days_observed": len(day_max), "days_held": held}
        return {"ld_id": ld_id, "sub_number": sub_number, "days": days, "timezone": str(self.tz),
                "hours": [hour_from, hour_to], "samples": len(rows), "by_time_of_day": profile,
                "suggested": suggestion}
