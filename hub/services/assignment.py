"""Head-end assignment: which head-end a newly registered device joins.

Strategies are named in ``[registry] assignment``; a new one is a class registered in STRATEGIES.
"""

from __future__ import annotations

from typing import Protocol


class AssignmentStrategy(Protocol):
    def choose(self, loads: dict[int, int], capacities: dict[int, int]) -> int | None:
        """Return the HEID to use, or None when every head-end is full."""


class FillLowest:
    """The seed's rule: fill the lowest HEID up to its capacity, then the next."""

    def choose(self, loads: dict[int, int], capacities: dict[int, int]) -> int | None:
        for he_id in sorted(capacities):
            if loads.get(he_id, 0) < capacities[he_id]:
                return he_id
        return None


class LeastLoaded:
    """Spread devices: the head-end with the lowest fill ratio (lowest HEID on ties)."""

    def choose(self, loads: dict[int, int], capacities: dict[int, int]) -> int | None:
        open_ = [he for he, cap in capacities.items() if loads.get(he, 0) < cap]
        if not open_:
            return None
        return min(open_, key=lambda he: (loads.get(he, 0) / capacities[he], he))


STRATEGIES: dict[str, type[AssignmentStrategy]] = {
    "fill-lowest": FillLowest,
    "least-loaded": LeastLoaded,
}


def strategy(name: str) -> AssignmentStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown assignment strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
