"""Many targeted policies: the opt answer is decided from the distinct policy shapes, at once, and
the per-LD matching, planning and reservations follow after answering (``answer_inline_max``), with
the same outcome on the meters as inline matching."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hub.runtime import Hub
from tests.test_adr_service import VTN, actions, adr_hub, clock, contract, event, policy  # noqa: F401 - fixtures


@pytest.fixture
def deferred(adr_hub: Hub) -> Hub:  # noqa: F811
    adr_hub.adr.settings = adr_hub.adr.settings.model_copy(update={"answer_inline_max": 0})
    return adr_hub


async def test_the_answer_comes_before_matching_and_the_meters_are_still_cut(deferred, clock):  # noqa: F811
    policy(deferred, "LD-000001")
    policy(deferred, "LD-000002", reduction_step_amps=5)
    policy(deferred, "LD-000003", signal_levels=[3])        # level 2 is not answered
    [answer] = await deferred.adr.receive(VTN, [event(level=2)])
    assert (answer.opt, answer.code) == ("optIn", 200)
    assert "3 active policies targeted; matching in progress" in answer.reason
    assert actions(deferred) == []                           # nothing matched per LD yet
    await deferred.adr.drain()
    got = {a["ld_id"]: (a["state"], a["reduced_amps"]) for a in actions(deferred)}
    assert got == {"LD-000001": ("reserved", 20), "LD-000002": ("reserved", 20)}
    clock.advance(timedelta(minutes=15))
    assert [await contract(deferred, ld) for ld in ("LD-000001", "LD-000002", "LD-000003")] == [20, 20, 30]
    clock.advance(timedelta(minutes=30))
    assert await contract(deferred, "LD-000001") == 30


async def test_no_matching_shape_opts_out_with_the_reason(deferred):
    policy(deferred, "LD-000001")
    policy(deferred, "LD-000002", signal_levels=[3])
    [answer] = await deferred.adr.receive(VTN, [event(level=0)])
    assert answer.opt == "optOut" and "signal level 0" in answer.reason
    await deferred.adr.drain()
    assert actions(deferred) == []


async def test_a_modification_before_matching_leaves_only_the_new_version_live(deferred, clock):
    policy(deferred, "LD-000001")
    await deferred.adr.receive(VTN, [event(mod=0)])
    await deferred.adr.receive(VTN, [event(mod=1, start=timedelta(minutes=60))])
    await deferred.adr.drain()
    live = {(a["modification_number"], a["state"]) for a in actions(deferred)
            if a["state"] in ("planned", "reserved", "failed")}
    assert live == {(1, "reserved")}
    clock.advance(timedelta(minutes=15))
    assert await contract(deferred, "LD-000001") == 30      # the first window is not cut
    clock.advance(timedelta(minutes=50))
    assert await contract(deferred, "LD-000001") == 20
