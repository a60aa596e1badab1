"""Certificate history (seed §2.3.2 "製造", §2.3.5): certificates are issued in bulk before the meters
are made and registered here; a disposed meter's certificate is revoked by a separate call, so a
security scheme other than the seed's ALA can follow its own timing.

Bulk registration reports each item like the device import does: bad or duplicate items are
refused by item number, the valid ones are stored in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import false, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from hub.db import Database, utcnow
from hub.model import Certificate
from hub.services.errors import Conflict, FieldError, InvalidInput, NotFound
from hub.services.registry import MAX_REPORTED_ERRORS

_IN_CHUNK = 500


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CertificateIn(_Input):
    serial: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
                        description="certificate serial number (printable ASCII, no spaces)")
    subject: str | None = Field(None, max_length=256)
    issued_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> CertificateIn:
        if self.issued_at is not None and self.expires_at is not None and self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class CertificateFilter(_Input):
    revoked: bool | None = Field(None, description="true: only revoked; false: only valid")


class Revocation(_Input):
    reason: str = Field(min_length=1, max_length=256, description="why the certificate is revoked")


@dataclass
class CertificateReport:
    items: int = 0
    stored: int = 0
    failed: int = 0
    errors: list[FieldError] = field(default_factory=list)
    errors_truncated: bool = False

    def add_error(self, err: FieldError) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)
        else:
            self.errors_truncated = True

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "stored": self.stored, "failed": self.failed,
                "errors": [{k: v for k, v in e.__dict__.items() if v is not None} for e in self.errors],
                "errors_truncated": self.errors_truncated}


class CertificateService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, data: Any) -> CertificateReport:
        """Store the certificates of a JSON list (or ``{"certificates": [...]}``); ``line`` in the
        report's errors is the 1-based item number."""
        items = data.get("certificates") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise InvalidInput.on("certificates", "expected a JSON array of certificates or "
                                                  "{\"certificates\": [...]}")
        report = CertificateReport(items=len(items))
        valid: list[tuple[int, CertificateIn]] = []
        for number, raw in enumerate(items, start=1):
            try:
                valid.append((number, CertificateIn.model_validate(raw)))
            except ValidationError as exc:
                report.failed += 1
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"]) or "item"
                    report.add_error(FieldError(loc, err["msg"], line=number))
        now = utcnow()
        with self.db.session() as s:
            serials = list({cert.serial for _, cert in valid})
            taken: set[str] = set()
            for start in range(0, len(serials), _IN_CHUNK):
                taken.update(s.scalars(select(Certificate.serial).where(
                    Certificate.serial.in_(serials[start:start + _IN_CHUNK]))))
            seen: set[str] = set()
            rows = []
            for number, cert in valid:
                problem = ("is already registered" if cert.serial in taken
                           else "appears more than once in this request" if cert.serial in seen else None)
                if problem:
                    report.failed += 1
                    report.add_error(FieldError("serial", f"serial {cert.serial} {problem}", line=number))
                    continue
                seen.add(cert.serial)
                rows.append({**cert.model_dump(), "revoked": False, "revoked_at": None,
                             "revocation_reason": None, "created_at": now})
            if rows:
                try:
                    s.execute(insert(Certificate), rows)
                    s.flush()
                except IntegrityError:
                    raise Conflict("some of these certificates were registered concurrently; retry") from None
            report.stored = len(rows)
        return report

    def list_certificates(self, f: CertificateFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        conds = [] if f.revoked is None else [Certificate.revoked == (true() if f.revoked else false())]
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(Certificate).where(*conds)) or 0
            rows = s.scalars(select(Certificate).where(*conds).order_by(Certificate.serial)
                             .limit(limit).offset(offset)).all()
            return [cert.model_dump(mode="json") for cert in rows], total

    def get(self, serial: str) -> dict[str, Any]:
        with self.db.session() as s:
            return _certificate(s, serial).model_dump(mode="json")

    def revoke(self, serial: str, data: Revocation) -> dict[str, Any]:
        """Mark a certificate revoked: 404 unknown, 409 already revoked (also when a concurrent
        revocation won: the update only applies to a certificate still valid)."""
        with self.db.session() as s:
            done = s.execute(update(Certificate)
                             .where(Certificate.serial == serial, Certificate.revoked == false())
                             .values(revoked=True, revoked_at=utcnow(), revocation_reason=data.reason))
            cert = _certificate(s, serial)
            if not done.rowcount:
                when = cert.revoked_at.isoformat() if cert.revoked_at else "an unknown time"
                raise Conflict.on("serial", f"certificate {serial} was already revoked at {when}")
            return cert.model_dump(mode="json")

def _certificate(s: Any, serial: str) -> Certificate:
    cert = s.get(Certificate, serial)
    if cert is None:
        raise NotFound.on("serial", f"certificate {serial} does not exist")
    return cert
