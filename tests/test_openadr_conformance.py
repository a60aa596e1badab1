"""The OpenADR VEN conformance suite: its test VTN (a real openleadr OpenADRServer) passes the hub's own
VEN, with the head-end simulator underneath, and catches VENs that answer events wrongly or not at all."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree

import pytest
from openleadr import OpenADRClient

from adapters.openadr.translate import load_mapping
from adapters.openadr.ven import HubVen, VtnConfig
from conformance import run_suite
from conformance.openadr_ven import VTN_ID, ConformanceVtn, junit_xml, report_text, run_cases
from tests.test_openadr_ven import actions, adr_hub, clock, free_port, settled  # noqa: F401 - fixtures

logging.getLogger("openleadr").setLevel(logging.CRITICAL)
POLL_S = 1


@pytest.fixture
async def vtn() -> AsyncIterator[ConformanceVtn]:
    v = ConformanceVtn(free_port(), poll_s=POLL_S)
    await v.server.run_async()
    yield v
    await v.server.stop()


async def test_the_hub_ven_passes_the_suite(adr_hub, vtn) -> None:  # noqa: F811
    ven = HubVen(adr_hub, VtnConfig(vtn.url, "mdmhub", poll_interval_s=0.05, retry_max_s=0.5, vtn_id=VTN_ID),
                 load_mapping())
    await ven.start()
    try:
        results = await run_cases(vtn, wait_s=10, answer_s=8)
    finally:
        await ven.stop()
    assert [(r.name, r.message) for r in results if r.status == "failed"] == []
    assert {r.name for r in results} >= {"registration", "report_registration", "report_delivery", "polling",
                                         "event_answered", "one_response_per_event", "modification",
                                         "cancellation", "test_event", "reregistration"}
    suite = ElementTree.fromstring(junit_xml(results, vtn.url))
    assert suite.get("failures") == "0" and int(suite.get("tests") or 0) == len(results)
    assert f"{len(results)} passed, 0 failed" in report_text(results, vtn.url, vtn.ven_id)
    await settled(adr_hub)
    # the suite's events lay ahead and were all cancelled at its end: no reservation is left held
    assert {state for *_, state in actions(adr_hub)} <= {"cancelled", "released"}
    assert {r.state for r in adr_hub.head_ends.port(1).reservations()} <= {"cancelled"}


class SilentVen(OpenADRClient):
    """Registers and polls like openleadr's client, but never answers oadrDistributeEvent."""

    async def _on_event(self, message: dict[str, Any]) -> None:
        return None


class WrongIdVen(OpenADRClient):
    """Answers every event, each with an eventID that is not the event's."""

    async def _on_event(self, message: dict[str, Any]) -> None:
        responses = [{"response_code": 200, "response_description": "OK", "opt_type": "optIn",
                      "request_id": message["request_id"],
                      "modification_number": e["event_descriptor"]["modification_number"],
                      "event_id": e["event_descriptor"]["event_id"] + "-X"} for e in message["events"]]
        created = self._create_message("oadrCreatedEvent", ven_id=self.ven_id, event_responses=responses,
                                       response={"response_code": 200, "response_description": "OK",
                                                 "request_id": None})
        await self._perform_request("EiEvent", created)


@pytest.mark.parametrize("faulty", [SilentVen, WrongIdVen])
async def test_a_faulty_ven_is_caught(vtn, faulty) -> None:
    ven = faulty(ven_name="faulty", vtn_url=vtn.url, show_fingerprint=False)
    await ven.run()
    try:
        results = await run_cases(vtn, wait_s=10, answer_s=2)
    finally:
        await ven.stop()
    failed = {r.name: r.message for r in results if r.status == "failed"}
    assert "registration" not in failed and "polling" not in failed  # it registers and polls well enough
    for case in ("event_answered", "one_response_per_event", "modification", "cancellation", "test_event"):
        assert "no oadrCreatedEvent answering" in failed[case], (case, failed.get(case))
    assert "report_registration" in failed  # openleadr's bare client offers no TELEMETRY_USAGE
    assert "0 passed" not in report_text(results, vtn.url, vtn.ven_id)


def test_the_command_without_a_port_is_a_usage_error() -> None:
    assert run_suite("openadr-ven", None, vtn_port=None) == 2
