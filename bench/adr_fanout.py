"""ADR fan-out benchmark: ``python -m bench.adr_fanout [--lds 10000] [--head-ends 4] [--latency 0.1]
[--concurrency 32] [--answer-inline-max 1000] [--db sqlite:///...]``.

One DR event targeting the VEN as a whole reaches N metering points with active policies on the
head-end simulator (``latency`` seconds per request, ``concurrency`` requests in flight per
head-end). Measured: time until the opt answer is ready (what the VTN waits for), and time until
every reservation is recorded in the action history; checked: no reservation lost (every action
reserved, one simulator reservation per LD). ``--answer-inline-max`` above N gives the baseline in
which every LD is matched and its action inserted before answering.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from adapters.headend.registry import build_head_end
from hub.config import Settings
from hub.db import Database, make_engine
from hub.demo import demo_rows, seed_catalogue
from hub.migrate import upgrade
from hub.model import AdrAction
from hub.runtime import Hub
from hub.services.adr_events import DrEvent, Interval, Signal, Targets
from hub.services.adr_policies import PolicyIn


def build(url: str, lds: int, head_ends: int, latency: float, concurrency: int, inline_max: int = 1000) -> Hub:
    upgrade(make_engine(url))
    settings = Settings.model_validate({"database": {"url": url}, "log": {"format": "text"},
                                        "openadr": {"answer_grace_s": 0.5, "fanout_concurrency": 4096,
                                                    "answer_inline_max": inline_max}})
    hub = Hub(settings, Database.from_url(url), head_end_factory=functools.partial(build_head_end))
    seed_catalogue(hub, head_ends=head_ends, capacity=max(20_000, lds),
                   simulator={"latency_s": latency, "concurrency": concurrency})
    rows = demo_rows(lds, seed=1, head_ends=head_ends)
    for r in rows:
        r["contract_amps"] = 30
    report = hub.registry.import_json(rows, atomic=True)
    assert not report.failed, report.as_dict()
    hub.adr.policies.create_many([PolicyIn(ld_id=r["ld_id"], reduced_amps=20) for r in rows])
    return hub


async def measure(hub: Hub, lds: int) -> dict[str, float | int]:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now + timedelta(minutes=10)
    ev = DrEvent("BENCH-1", 0, start, 3600, tolerance_s=300,
                 signals=(Signal("SIMPLE", "level", (Interval(start, 3600, 2),)),), targets=Targets(everything=True))
    t0 = time.perf_counter()
    [answer] = await hub.adr.receive("VTN-BENCH", [ev])
    answered = time.perf_counter() - t0
    await hub.adr.drain()
    recorded = time.perf_counter() - t0
    with hub.db.session() as s:
        states = dict(s.execute(select(AdrAction.state, func.count()).group_by(AdrAction.state)).all())
    held = sum(len(hub.head_ends.port(he).reservations()) for he in hub.head_ends.he_ids())
    return {"lds": lds, "opt": answer.opt, "answer_s": round(answered, 3), "all_recorded_s": round(recorded, 2),
            "reserved": states.get("reserved", 0), "failed": states.get("failed", 0), "simulator_reservations": held}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.adr_fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("--lds", type=int, default=10_000)
    p.add_argument("--head-ends", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--answer-inline-max", type=int, default=1000)
    p.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    a = p.parse_args(argv)
    url = a.db or f"sqlite:///{Path(tempfile.mkdtemp()) / 'adr.db'}"
    t = time.perf_counter()
    hub = build(url, a.lds, a.head_ends, a.latency, a.concurrency, a.answer_inline_max)
    setup = time.perf_counter() - t
    try:
        result = asyncio.run(measure(hub, a.lds))
    finally:
        hub.close()
    result.update({"head_ends": a.head_ends, "latency_s": a.latency, "concurrency": a.concurrency, "answer_inline_max": a.answer_inline_max,
                   "setup_s": round(setup, 1), "backend": url.split(":", 1)[0]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
