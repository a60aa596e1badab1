"""Fresh databases for a benchmark run: a SQLite file or a PostgreSQL database created for the run
and dropped after it, migrated with the real CLI and given the seed's catalogue through the services."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "MDMHUB_BENCH_PG_URL", os.environ.get("MDMHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
BACKENDS = ("sqlite", "postgresql")
HEAD_ENDS = 4
HE_CAPACITY = 20_000  # the seed: 4 head-ends x 20,000 meters per MDM


def mdmhub_command() -> list[str]:
    """The installed ``mdmhub`` console script of this interpreter (``python -m hub.cli`` without one)."""
    script = Path(sys.executable).with_name("mdmhub")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hub.cli"]


def hub_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of a hub child process bound to ``url`` (no config file of the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDMHUB_")}
    env.update(MDMHUB_DATABASE_URL=url, MDMHUB_LOG_FORMAT="json", **extra)
    return env


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """The URL of an empty database on ``backend``, removed when the block ends."""
    if backend == "sqlite":
        folder = workdir / f"sqlite-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        try:
            yield f"sqlite:///{folder / 'hub.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    name = f"mdmhub_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(make_url(PG_ADMIN_URL).set(database=name))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgresql_server() -> dict[str, str] | None:
    """Version and durability settings of the PostgreSQL server (None when it is not reachable)."""
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(text(f"SHOW {name}")).scalar_one()
                    for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "autovacuum")}
    except Exception:  # noqa: BLE001 - unreachable means "not measured", said in the report
        return None
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """``mdmhub db upgrade`` on the database, as an operator would run it."""
    subprocess.run([*mdmhub_command(), "db", "upgrade"], env=hub_env(url), check=True,
                   stdout=subprocess.DEVNULL)


def seed_catalogue(url: str) -> None:
    """The demo catalogue (types 11/101, parameter group 1, clusters) and 4 head-ends x 20,000."""
    from hub.config import Settings
    from hub.demo import seed_catalogue as seed
    from hub.runtime import Hub

    hub = Hub(Settings.model_validate({"database": {"url": url}}))
    try:
        seed(hub, head_ends=HEAD_ENDS, capacity=HE_CAPACITY)
    finally:
        hub.close()


def settle(url: str) -> None:
    """Bring planner statistics to what a running server has a minute after a bulk load.

    PostgreSQL's autovacuum analyses freshly loaded tables on its own, but only when it runs (it is
    off on some servers, and its timing would make results depend on when a run starts), so the
    benchmark runs ANALYZE itself. SQLite keeps no statistics unless asked, and the hub never asks:
    nothing to do there."""
    if not url.startswith("postgresql"):
        return
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
