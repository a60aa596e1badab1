"""Runnable conformance suites (``mdmhub conformance SUITE --target URL``).

Each suite checks any endpoint of its standard, the hub's own included, and writes a JUnit XML file
and a readable report. Suites register themselves in SUITES.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

SUITES: dict[str, Callable[[str | None], int]] = {}


def _cim(target: str | None) -> int:
    from conformance.cim import run  # lxml and requests only when the suite runs

    return run(target)


SUITES["cim"] = _cim


def run_suite(name: str, target: str | None) -> int:
    """Run the named suite; returns the process exit code (0 all passed, 1 failures, 2 usage)."""
    suite = SUITES.get(name)
    if suite is None:
        print(f"unknown conformance suite {name!r}; available: {', '.join(sorted(SUITES)) or 'none yet'}",
              file=sys.stderr)
        return 2
    return suite(target)
