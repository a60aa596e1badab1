"""Implementations of the HeadEnd port (:mod:`hub.ports`): the head-end simulator, and the
registry that builds one per head-end row from its adapter name and settings."""

from adapters.headend.meters import ReservationInfo, ReservationState
from adapters.headend.registry import HeadEndConfigError, build_head_end, register_adapter
from adapters.headend.simulator import SimulatedHeadEnd

__all__ = ["HeadEndConfigError", "ReservationInfo", "ReservationState", "SimulatedHeadEnd", "build_head_end",
           "register_adapter"]
