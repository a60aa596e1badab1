"""Alert history and forwarding to the NMS (seed §2.4.3 障害アラートの通知).

Alerts come from the hub's own diagnosis (:mod:`hub.services.diagnosis`) and from other parts that
report faults they detect themselves (the seed's ALA and PROV write to the MDM's syslog). Both are
stored first, in one set-based insert, and only then handed to the notifier: an NMS that is down
never loses an alert. Alerts the notifier did not take keep ``nms_sent_at`` empty and go out again
with :meth:`AlertService.resend_unsent` (at least once: an alert whose delivery succeeded but whose
mark failed is sent again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select, update

from hub.db import Database, utcnow
from hub.model import Alert, LogicalDevice, LogicalDeviceType, ParameterGroupItem
from hub.services.diagnosis import AlertDraft, ItemRange, Ranges
from hub.services.errors import NotFound
from hub.services.message_outbox import queue_rows

log = logging.getLogger("mdmhub.alerts")
_CHUNK = 500
Severity = Literal["emergency", "alert", "critical", "error", "warning", "notice", "info", "debug"]


@dataclass(frozen=True)
class AlertRecord:
    """A stored alert as a notifier sees it (plain values, no session attached)."""

    id: int
    raised_at: datetime
    source: str
    severity: str
    code: str
    message: str
    ld_id: str | None = None
    he_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


class AlertNotifier(Protocol):
    """Where alerts go after they are stored (the NMS). Called from worker threads."""

    def deliver(self, alerts: Sequence[AlertRecord]) -> int:
        """Send ``alerts`` in order; return how many leading ones were delivered. Raising counts as none."""
        ...


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ExternalAlertIn(_Input):
    """An alert another part detected (the seed's ALA security violations, PROV provisioning failures)."""

    source: str = Field(min_length=1, max_length=64, description="the reporting part, e.g. ALA or PROV")
    code: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$",
                      description="dotted lower-case code, e.g. security.revoked-certificate")
    severity: Severity = "warning"
    message: str = Field(min_length=1, max_length=2000)
    ld_id: str | None = Field(None, min_length=1, max_length=64)
    he_id: int | None = Field(None, ge=1)
    details: dict[str, Any] = Field(default_factory=dict)
    raised_at: AwareDatetime | None = Field(None, description="when the part saw it; empty means now")


class AlertFilter(_Input):
    since: AwareDatetime | None = Field(None, description="raised at or after")
    until: AwareDatetime | None = Field(None, description="raised before")
    code: str | None = Field(None, max_length=64)
    ld_id: str | None = Field(None, max_length=64)
    severity: Severity | None = None
    source: str | None = Field(None, max_length=64)
    sent: bool | None = Field(None, description="true: only alerts the NMS received; false: only unsent")


class AlertService:
    def __init__(self, db: Database, notifier: AlertNotifier | None = None) -> None:
        self.db = db
        self.notifier = notifier
        self.listeners: list[Callable[[Sequence[AlertRecord]], None]] = []
        """Called with every batch of new alerts once stored (other edges' publishers, e.g. 61968-9
        events); each must queue durably and return fast. A failing listener is logged, never raised."""

    def raise_alerts(self, drafts: Iterable[AlertDraft]) -> list[int]:
        """Store the drafts (one insert), then notify; returns the new alert ids in draft order."""
        now = utcnow()
        rows = [{"raised_at": d.raised_at or now, "source": d.source, "severity": d.severity, "code": d.code,
                 "message": d.message, "ld_id": d.ld_id, "he_id": d.he_id, "details": d.details,
                 "nms_sent_at": None} for d in drafts]
        if not rows:
            return []
        with self.db.session() as s:
            ids = list(s.scalars(insert(Alert).returning(Alert.id, sort_by_parameter_order=True), rows))
        records = [AlertRecord(id=i, **{k: v for k, v in row.items() if k != "nms_sent_at"})
                   for i, row in zip(ids, rows, strict=True)]
        for listener in self.listeners:
            try:
                listener(records)
            except Exception:  # noqa: BLE001 - a broken publisher must not block the NMS or the caller
                log.warning("alert listener failed", exc_info=True, extra={"alerts": len(records)})
        self._notify(records)
        return ids

    def queue_events(self, records: Sequence[AlertRecord], channel: str,
                     build: Callable[[Sequence[AlertRecord]], list[tuple[str, str, str]]]) -> int:
        """Claim those of ``records`` whose outbound events are not queued yet and queue the
        ``(subscriber, topic, body)`` messages ``build`` makes of them (none is fine), in one
        transaction: an alert is marked queued exactly when its events are in the outbox, and
        two callers never queue the same alert. Returns how many alerts were claimed."""
        if not records:
            return 0
        now = utcnow()
        ids = [r.id for r in records]
        claimed: set[int] = set()
        with self.db.session() as s:
            for start in range(0, len(ids), _CHUNK):
                claimed.update(s.scalars(
                    update(Alert).where(Alert.id.in_(ids[start:start + _CHUNK]), Alert.events_queued_at.is_(None))
                    .values(events_queued_at=now).returning(Alert.id)
                    .execution_options(synchronize_session=False)))
            mine = [r for r in records if r.id in claimed]
            if mine:
                queue_rows(s, channel, build(mine), now)
        return len(mine)

    def unqueued(self, limit: int = 500) -> list[AlertRecord]:
        """Alerts whose outbound events were never queued (the hub stopped between storing an alert
        and queueing its events, or the alert was stored by a process that publishes nothing),
        oldest first."""
        with self.db.session() as s:
            alerts = s.scalars(select(Alert).where(Alert.events_queued_at.is_(None)).order_by(Alert.id)
                               .limit(limit)).all()
            return [_record(a) for a in alerts]

    def forward(self, data: ExternalAlertIn) -> dict[str, Any]:
        """Store and forward an alert another part reported; returns it as stored."""
        draft = AlertDraft(code=data.code, severity=data.severity, message=data.message, ld_id=data.ld_id,
                           he_id=data.he_id, details=data.details, source=data.source, raised_at=data.raised_at)
        (alert_id,) = self.raise_alerts([draft])
        return self.get(alert_id)

    def resend_unsent(self, limit: int = 1000) -> int:
        """Send alerts the NMS has not received yet, oldest first; returns how many went out."""
        if self.notifier is None:
            return 0
        with self.db.session() as s:
            alerts = s.scalars(select(Alert).where(Alert.nms_sent_at.is_(None)).order_by(Alert.id).limit(limit)).all()
            records = [_record(a) for a in alerts]
        return self._notify(records)

    def list_alerts(self, f: AlertFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Alerts matching ``f``, newest first."""
        conds = []
        if f.since is not None:
            conds.append(Alert.raised_at >= f.since)
        if f.until is not None:
            conds.append(Alert.raised_at < f.until)
        for column, value in ((Alert.code, f.code), (Alert.ld_id, f.ld_id), (Alert.severity, f.severity),
                              (Alert.source, f.source)):
            if value is not None:
                conds.append(column == value)
        if f.sent is not None:
            conds.append(Alert.nms_sent_at.is_not(None) if f.sent else Alert.nms_sent_at.is_(None))
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(Alert).where(*conds)) or 0
            rows = s.scalars(select(Alert).where(*conds).order_by(Alert.raised_at.desc(), Alert.id.desc())
                             .limit(limit).offset(offset)).all()
            return [a.model_dump(mode="json") for a in rows], total

    def get(self, alert_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            alert = s.get(Alert, alert_id)
            if alert is None:
                raise NotFound.on("id", f"alert {alert_id} does not exist")
            return alert.model_dump(mode="json")

    def load_ranges(self, ld_ids: Iterable[str] | None = None) -> Ranges:
        """The parameter group ranges of installed logical devices (all of them when ``ld_ids`` is
        empty), as :func:`hub.services.diagnosis.diagnose` takes them; devices of one group share
        one inner mapping."""
        with self.db.session() as s:
            groups: dict[int, dict[int, ItemRange]] = {}
            for item in s.scalars(select(ParameterGroupItem)):
                groups.setdefault(item.group_id, {})[item.sub_number] = ItemRange(
                    item.min_value, item.max_value, item.kind)
            query = (select(LogicalDevice.ld_id, LogicalDeviceType.group_id)
                     .join(LogicalDeviceType, LogicalDeviceType.type_id == LogicalDevice.type_id)
                     .where(LogicalDevice.ld_id.is_not(None)))
            if ld_ids is None:
                pairs = list(s.execute(query))
            else:
                wanted = list(set(ld_ids))
                pairs = []
                for start in range(0, len(wanted), _CHUNK):
                    pairs += s.execute(query.where(LogicalDevice.ld_id.in_(wanted[start:start + _CHUNK])))
        return {ld_id: groups.get(group_id, {}) for ld_id, group_id in pairs}

    def _notify(self, records: list[AlertRecord]) -> int:
        if self.notifier is None or not records:
            return 0
        try:
            delivered = max(0, min(self.notifier.deliver(records), len(records)))
        except Exception:  # noqa: BLE001 - a broken NMS link must never lose or block an alert
            log.warning("alert notification failed; alerts stay unsent", exc_info=True,
                        extra={"alerts": len(records)})
            delivered = 0
        if delivered < len(records):
            log.warning("NMS did not take every alert", extra={"delivered": delivered, "alerts": len(records)})
        sent = [r.id for r in records[:delivered]]
        if sent:
            now = utcnow()
            with self.db.session() as s:
                for start in range(0, len(sent), _CHUNK):
                    s.execute(update(Alert).where(Alert.id.in_(sent[start:start + _CHUNK])).values(nms_sent_at=now))
        return delivered


def _record(a: Alert) -> AlertRecord:
    assert a.id is not None
    return AlertRecord(id=a.id, raised_at=a.raised_at, source=a.source, severity=a.severity, code=a.code,
                       message=a.message, ld_id=a.ld_id, he_id=a.he_id, details=dict(a.details or {}))
