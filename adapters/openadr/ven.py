"""The hub's OpenADR 2.0b VEN on openleadr's :class:`OpenADRClient` (simple HTTP, pull).

openleadr supplies the codec (XML, schema validation, signatures, TLS); this VEN owns the state
machine the library leaves out: its own poll loop with back-off that survives VTN outages,
re-registration when the VTN asks or has forgotten the VEN, translation of every event through
:mod:`adapters.openadr.translate`, one eventResponse per event from the hub's ADR service (targets,
market context, modification numbers and implied cancellation decided in the core), and a payload
answer per the protocol for malformed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openleadr import OpenADRClient, enums, objects

from adapters.openadr.reports import VenReports
from adapters.openadr.update_report import OutgoingMessages
from adapters.openadr.translate import (
    INVALID_DATA,
    OpenAdrMapping,
    TranslationError,
    event_key,
    translate_event,
)

if TYPE_CHECKING:
    from hub.config import OpenAdrSection
    from hub.runtime import Hub
    from hub.services.adr import Withdrawal

log = logging.getLogger("mdmhub.openadr")
NOT_REGISTERED = (452, 463)  # invalid ID, not registered or authorised
INVALID_ID = 452


@dataclass(frozen=True)
class VtnConfig:
    """Everything one VEN instance needs to reach one VTN."""

    vtn_url: str
    ven_name: str
    ven_id: str | None = None
    vtn_id: str | None = None
    market_context: str | None = None
    vtn_fingerprint: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_passphrase: str | None = None
    ca_file: Path | None = None
    check_hostname: bool = True
    sign_messages: bool = False
    poll_interval_s: float = 10.0
    retry_max_s: float = 300.0

    @classmethod
    def all_from(cls, s: OpenAdrSection) -> list[VtnConfig]:
        """``[openadr] vtn_url`` plus every ``[[openadr.vtns]]`` entry, the latter inheriting the rest."""
        common = {"cert_file": s.cert_file, "key_file": s.key_file, "key_passphrase": s.key_passphrase,
                  "ca_file": s.ca_file, "check_hostname": s.check_hostname, "sign_messages": s.sign_messages,
                  "poll_interval_s": s.poll_interval_s, "retry_max_s": s.retry_max_s}
        out = []
        if s.vtn_url:
            out.append(cls(s.vtn_url, s.ven_name, s.ven_id, s.vtn_id, s.market_context, s.vtn_fingerprint, **common))
        for v in s.vtns:
            out.append(cls(v.vtn_url, v.ven_name or s.ven_name, v.ven_id, v.vtn_id, v.market_context,
                           v.vtn_fingerprint or s.vtn_fingerprint, **common))
        return out


class HubVen(OpenADRClient):
    """A VEN registered with one VTN, answering events through the hub's ADR service."""

    def __init__(self, hub: Hub, cfg: VtnConfig, mapping: OpenAdrMapping) -> None:
        signing = bool(cfg.sign_messages and cfg.cert_file and cfg.key_file)
        super().__init__(ven_name=cfg.ven_name, vtn_url=cfg.vtn_url, ven_id=cfg.ven_id,
                         cert=str(cfg.cert_file) if cfg.cert_file else None,
                         key=str(cfg.key_file) if cfg.key_file else None,
                         passphrase=cfg.key_passphrase, vtn_fingerprint=cfg.vtn_fingerprint,
                         ca_file=str(cfg.ca_file) if cfg.ca_file else None, check_hostname=cfg.check_hostname,
                         disable_signature=not signing, show_fingerprint=False)
        self._create_message = OutgoingMessages(
            self._create_message, cert=cfg.cert_file.read_bytes() if signing and cfg.cert_file else None,
            key=cfg.key_file.read_bytes() if signing and cfg.key_file else None,
            passphrase=cfg.key_passphrase, sign=signing)
        self.hub = hub
        self.cfg = cfg
        self.mapping = mapping
        self.polls = 0
        self.registrations = 0
        self.failures = 0  # consecutive polls without an answer
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.offered = VenReports(hub, vtn=lambda: self.vtn_key)
        self.offered.install(self)
        self._report_task: asyncio.Task[None] | None = None
        self.vtn_key = cfg.vtn_url  # the VTN's vtnID once known: how the hub's ADR history names it
        self.opts_sent: list[tuple[str, int, bool]] = []  # (eventID, modification, acknowledged)

    # life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and poll in the background until :meth:`stop`."""
        self.loop = asyncio.get_running_loop()
        self._stopping = False
        self._task = asyncio.create_task(self._run_loop(), name=f"openadr-ven {self.cfg.vtn_url}")
        self.hub.adr.withdrawal_listeners.append(self.withdraw)
        self._report_task = asyncio.create_task(self._report_queue_worker(), name="openadr-ven reports")
        if not self.scheduler.running:
            self.scheduler.start()  # openleadr runs the VTN's report requests on it

    async def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.hub.adr.withdrawal_listeners.remove(self.withdraw)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for task in (self._task, self._report_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.client_session is not None:
            await self.client_session.close()
            self.client_session = None

    @property
    def registered(self) -> bool:
        return self.registration_id is not None

    async def _run_loop(self) -> None:
        delay = 0.0
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            try:
                if not self.registered:
                    await self.register()
                answered = self.registered and await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the VEN keeps polling whatever one round did
                log.exception("VEN poll round failed", extra={"vtn_url": self.cfg.vtn_url})
                answered = False
            if answered:
                self.failures = 0
                delay = self.interval()
            else:
                self.failures += 1
                delay = min(self.cfg.retry_max_s, max(self.interval(), 0.5) * 2 ** min(self.failures, 10))

    def interval(self) -> float:
        """Never faster than the VTN asked, nor than the configured shortest interval."""
        asked = self.poll_frequency.total_seconds() if isinstance(self.poll_frequency, timedelta) else 0.0
        return max(asked, self.cfg.poll_interval_s)

    async def register(self) -> bool:
        """Query, then create the party registration, then sync events (oadrRequestEvent)."""
        _, answer = await self.query_registration()
        request_id = ((answer or {}).get("response") or {}).get("request_id")
        self.registration_id = None
        await self.create_party_registration(ven_id=self.ven_id, request_id=request_id)
        if not self.registered:
            log.warning("VTN did not register the VEN", extra={"vtn_url": self.cfg.vtn_url})
            return False
        self.registrations += 1
        log.info("VEN registered", extra={"vtn_url": self.cfg.vtn_url, "ven_id": self.ven_id,
                                          "registration_id": self.registration_id})
        if self.reports:
            await self.register_reports(self.reports)
        await self.sync_events()
        return True

    async def sync_events(self) -> None:
        kind, payload = await self.request_event()
        if kind == "oadrDistributeEvent":
            await self._on_event(payload)

    async def _poll_once(self) -> bool:
        """One poll and whatever it brings; False when the VTN did not answer."""
        self.polls += 1
        kind, payload = await self.poll()
        if kind is None:
            return False
        code = ((payload or {}).get("response") or {}).get("response_code")
        if kind == "oadrResponse" and code in NOT_REGISTERED:
            log.warning("VTN no longer knows this VEN; registering again", extra={"vtn_url": self.cfg.vtn_url})
            self.registration_id = None
            await self.register()
        elif kind == "oadrRequestReregistration":
            await self.send_response(service="EiRegisterParty")
            self.registration_id = None
            await self.register()
        elif kind == "oadrDistributeEvent":
            await self._on_event(payload)
        elif kind == "oadrCreateReport" and "report_requests" in payload:
            await self.create_report(payload)
        elif kind == "oadrRegisterReport":
            message = self._create_message("oadrRegisteredReport", report_requests=[], ven_id=self.ven_id,
                                           response={"response_code": 200, "response_description": "OK",
                                                     "request_id": payload.get("request_id")})
            await self._perform_request("EiReport", message)
        elif kind == "oadrCancelPartyRegistration":
            await self.on_cancel_party_registration(payload)
        elif kind == "oadrCancelReport":
            await self.cancel_report(payload)
        elif kind != "oadrResponse":
            log.warning("VTN sent a message this VEN does not handle", extra={"type": kind})
        return True

    # events -------------------------------------------------------------------------------------

    async def _on_event(self, message: dict[str, Any]) -> None:
        """Answer an oadrDistributeEvent: one eventResponse per event that asks for one."""
        answers = await self.answer_distribution(message)
        responses = [{"response_code": code, "response_description": "OK" if code == 200 else reason[:200],
                      "opt_type": opt, "request_id": message.get("request_id"),
                      "modification_number": mod, "event_id": event_id}
                     for event_id, mod, opt, code, reason, required in answers if required]
        if not responses:
            return
        created = self._create_message("oadrCreatedEvent", ven_id=self.ven_id, event_responses=responses,
                                       response={"response_code": 200, "response_description": "OK",
                                                 "request_id": None})
        await self._perform_request("EiEvent", created)

    async def answer_distribution(self, message: dict[str, Any]) -> list[tuple[str, int, str, int, str, bool]]:
        """(eventID, modificationNumber, opt, code, reason, response required) per event, in order."""
        raw_events = message.get("events") or []
        vtn_id = str(message.get("vtn_id") or "")
        self.vtn_key = vtn_id or self.cfg.vtn_url
        ven_ids = {self.ven_id} if self.ven_id else set()
        out: list[tuple[str, int, str, int, str, bool] | None] = []
        good, unreadable = [], set()
        for raw in raw_events:
            try:
                if self.cfg.vtn_id and vtn_id != self.cfg.vtn_id:
                    raise TranslationError(INVALID_ID, f"vtnID {vtn_id!r} is not the configured VTN")
                good.append(translate_event(raw, ven_ids=ven_ids, mapping=self.mapping))
                out.append(None)
            except TranslationError as e:
                event_id, mod = event_key(raw)
                log.warning("DR event refused", extra={"vtn_id": vtn_id, "event_id": event_id, "code": e.code,
                                                       "reason": e.reason})
                if event_id is not None:
                    unreadable.add(event_id)
                required = not (isinstance(raw, dict) and raw.get("response_required") == "never")
                out.append((event_id or "", mod or 0, "optOut", e.code, e.reason, required and bool(event_id)))
        answers = iter(await self.hub.adr.receive(self.vtn_key, good, complete=True,
                                                  market_context=self.cfg.market_context, also_present=unreadable)
                       if good or not raw_events else [])
        result = []
        for slot in out:
            if slot is None:
                a = next(answers)
                slot = (a.event_id, a.modification_number, a.opt, a.code, a.reason, a.response_required)
            result.append(slot)
        return result


    async def withdraw(self, w: Withdrawal) -> None:
        """Every reservation of an event this VEN opted in to failed: oadrCreateOpt optOut for it
        (EiOpt, the VEN as the target), so the VTN does not count on the reduction."""
        if w.vtn_id != self.vtn_key or not self.registered:
            return
        opt_id = await self.create_opt(opt_type=enums.OPT.OPT_OUT, opt_reason=enums.OPT_REASON.NOT_PARTICIPATING,
                                       targets=[objects.Target(ven_id=self.ven_id)], event_id=w.event_id,
                                       modification_number=w.modification_number)
        self.opts_sent.append((w.event_id, w.modification_number, bool(opt_id)))
        if not opt_id:
            log.warning("VTN did not acknowledge oadrCreateOpt", extra={"vtn_url": self.cfg.vtn_url,
                                                                       "event_id": w.event_id})


__all__ = ["INVALID_DATA", "HubVen", "VtnConfig"]
