"""Device search through the HTTP API: ``GET /api/v1/logical-devices`` by LD_ID and by CO_ID on a
store holding the registration benchmark's meters.

The hub runs as ``mdmhub serve --port 0`` in its own process, so the client (this process) and the
server do not share an interpreter; one keep-alive connection sends the requests one at a time.
Baseline, same run, same connection: ``GET /health`` (routing, a worker-thread hop and ``SELECT 1``),
interleaved with the searches so that drift in a noisy machine hits every kind alike.

The store is searched as it stands once planner statistics are current (see ``stores.settle``).
CO_ID searches ask for a real concentrator (400 meters) and, separately, for a head-end's holding
concentrator (20,000 meters at the seed's scale, the heaviest CO_ID search there is); see ``fleet``.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.fleet import CONCENTRATOR_SIZE, PAGE, Fleet, ld_id
from bench.harness import Measure, Run, percentiles
from bench.stores import hub_env, mdmhub_command, settle

P50_TARGET_MS = 5.0
WARMUP = 200
_URL_RE = re.compile(r"listening on http://([^:\s]+):(\d+)")


@contextmanager
def running_hub(url: str, workdir: Path, start_timeout_s: float = 60.0) -> Iterator[tuple[str, int]]:
    """``mdmhub serve --port 0`` on the store; yields (host, port) once it listens, stops it after."""
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen([*mdmhub_command(), "serve", "--host", "127.0.0.1", "--port", "0"],
                            env=hub_env(url), stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := _URL_RE.search(line):
                yield m.group(1), int(m.group(2))
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"the hub did not start (exit {proc.poll()}); see {workdir / 'serve.log'}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Client:
    """One keep-alive HTTP/1.1 connection; :meth:`get` returns (milliseconds, status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        if resp.will_close:
            raise RuntimeError(f"the server closed the keep-alive connection after {path}")
        return elapsed, resp.status, body

    def close(self) -> None:
        self.conn.close()


def _check_health(_path: str, body: dict[str, Any]) -> None:
    if body.get("status") != "ok":
        raise RuntimeError(f"health answered {body}")


def _check_ld(path: str, body: dict[str, Any]) -> None:
    wanted = path.rsplit("=", 1)[1]
    if body.get("total") != 1 or body["items"][0]["ld_id"] != wanted:
        raise RuntimeError(f"{path} answered {str(body)[:300]}")


def _check_co(path: str, body: dict[str, Any]) -> None:
    co_id = path.split("co_id=", 1)[1].split("&", 1)[0]
    items = body.get("items", [])
    if len(items) != PAGE or any(i["co_id"] != co_id for i in items) or body.get("total", 0) < PAGE:
        raise RuntimeError(f"{path} answered {len(items)} items, total {body.get('total')}")


def bench_search(run: Run, backend: str, url: str, devices: int, workdir: Path, requests: int = 2000,
                 seed: int = 1888) -> None:
    """Time ``requests`` searches of each kind against the hub serving ``url``."""
    rng = random.Random(seed)
    fleet = Fleet(devices)
    installed, holding = fleet.full_concentrators, sorted(fleet.holding_concentrators)
    by_co = f"by CO_ID, {CONCENTRATOR_SIZE} meters"
    by_holding = f"by CO_ID, holding {max(fleet.holding_concentrators.values()):,}"
    kinds: dict[str, tuple[Callable[[], str], Callable[[str, dict[str, Any]], None]]] = {
        "health": (lambda: "/health", _check_health),
        "by LD_ID": (lambda: f"/api/v1/logical-devices?ld_id={ld_id(rng.randint(1, devices))}", _check_ld),
        by_co: (lambda: f"/api/v1/logical-devices?co_id={rng.choice(installed)}&limit={PAGE}", _check_co),
        by_holding: (lambda: f"/api/v1/logical-devices?co_id={rng.choice(holding)}&limit={PAGE}", _check_co),
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    settle(url)
    with running_hub(url, workdir) as (host, port):
        client = Client(host, port)
        try:
            for n in range(WARMUP + requests):
                for kind, (make_path, check) in kinds.items():
                    path = make_path()
                    ms, status, raw = client.get(path)
                    if status != 200:
                        raise RuntimeError(f"GET {path}: HTTP {status}: {raw[:500]!r}")
                    check(path, json.loads(raw))
                    if n >= WARMUP:
                        samples[kind].append(ms)
        finally:
            client.close()

    stats = {kind: percentiles(values) for kind, values in samples.items()}
    base = stats["health"]
    name = f"search ({devices:,} devices, {requests:,} requests each)"
    run.add(Measure(name, backend, "GET /health p50", base["p50"], "ms"))
    for kind in list(kinds)[1:]:
        for point in ("p50", "p95", "p99"):
            target = f"p50 < {P50_TARGET_MS:.0f} ms" if point == "p50" else None
            met = stats[kind]["p50"] < P50_TARGET_MS if point == "p50" else None
            run.add(Measure(name, backend, f"{kind} {point}", stats[kind][point], "ms", base[point],
                            f"/health {point}", target, met))
    run.details.setdefault("search", {})[backend] = {
        "devices": devices, "requests": requests, "warmup": WARMUP,
        "concentrators": {"installed": len(installed), "holding": fleet.holding_concentrators},
        "ms": {kind: {k: round(v, 3) for k, v in s.items()} for kind, s in stats.items()},
    }
