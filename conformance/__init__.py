"""Runnable conformance suites (``mdmhub conformance SUITE --target URL``).

Each suite checks any endpoint of its standard, the hub's own included, and writes a JUnit XML file
and a readable report. Suites register themselves in SUITES.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

SUITES: dict[str, Callable[..., int]] = {}


def _cim(target: str | None) -> int:
    from conformance.cim import run  # lxml and requests only when the suite runs

    return run(target)


SUITES["cim"] = _cim


def _openadr_ven(target: str | None, **options: Any) -> int:
    from conformance.openadr_ven import run  # openleadr only when the suite runs

    return run(target, **options)


SUITES["openadr-ven"] = _openadr_ven


def run_suite(name: str, target: str | None, **options: Any) -> int:
    """Run the named suite; returns the process exit code (0 all passed, 1 failures, 2 usage).
    ``options`` are the suite's own (e.g. ``vtn_port`` of openadr-ven), passed only when given."""
    suite = SUITES.get(name)
    if suite is None:
        print(f"unknown conformance suite {name!r}; available: {', '.join(sorted(SUITES)) or 'none yet'}",
              file=sys.stderr)
        return 2
    return suite(target, **options) if options else suite(target)
