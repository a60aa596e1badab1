"""Timing, percentiles, the machine description and result output shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Measure:
    """One figure of a benchmark: its value, unit and, when it has one, the same-run baseline."""

    benchmark: str
    backend: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class Run:
    """Everything one ``bench.run`` invocation measured, with the machine it ran on."""

    machine: dict[str, Any]
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    options: dict[str, Any] = field(default_factory=dict)
    measures: list[Measure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, measure: Measure) -> Measure:
        self.measures.append(measure)
        return measure

    def as_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "started_at": self.started_at, "options": self.options,
                "measures": [asdict(m) | {"ratio": m.ratio} for m in self.measures], "details": self.details}


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (no interpolation: every figure is a latency that was observed)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    out = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n)
        out[f"p{p}"] = ordered[rank - 1]
    out["mean"] = statistics.fmean(ordered)
    out["max"] = ordered[-1]
    return out


def machine(pg_version: str | None = None) -> dict[str, Any]:
    """What the figures came from: CPU, cores, memory, OS, Python and database versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def write_json(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.as_dict(), indent=2) + "\n", encoding="utf-8")


def markdown(run: Run) -> str:
    """The run as Markdown: the machine, then one table row per figure."""
    m = run.machine
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; Python {m['python']}, "
        f"SQLite {m['sqlite']}, PostgreSQL {m['postgresql'] or 'not used'}. Run started {run.started_at}.",
        "",
        "| benchmark | backend | figure | value | baseline | ratio | target | met |",
        "|---|---|---|---:|---|---:|---|---|",
    ]
    for x in run.measures:
        base = f"{_fmt(x.baseline)} {x.unit} ({x.baseline_name})" if x.baseline is not None else ""
        ratio = f"{x.ratio:.2f}x" if x.ratio is not None else ""
        met = "" if x.met is None else ("yes" if x.met else "**no**")
        lines.append(f"| {x.benchmark} | {x.backend} | {x.name} | {_fmt(x.value)} {x.unit} | {base} | {ratio} "
                     f"| {x.target or ''} | {met} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"
