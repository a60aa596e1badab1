"""Fixtures: every store-backed test runs on SQLite and on the real PostgreSQL server.

PostgreSQL is at $MDMHUB_TEST_PG_URL (default: the local server, database ``test``). Each test run
creates its own database and drops it afterwards. If the server cannot be reached the PostgreSQL
tests fail (they never skip): start it, or deselect them with MDMHUB_TEST_BACKENDS=sqlite.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hub.config import Settings
from hub.db import Database, make_engine
from hub.migrate import upgrade
from hub.model import metadata
from hub.runtime import Hub

PG_ADMIN_URL = os.environ.get("MDMHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("MDMHUB_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is much faster)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"mdmhub_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure must fail loudly
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}. Start it "
                    "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or run with "
                    "MDMHUB_TEST_BACKENDS=sqlite", pytrace=False)
    url = str(make_url(PG_ADMIN_URL).set(database=name))
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty, migrated database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "hub.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings.model_validate({"database": {"url": database_url}, "data": {"dir": tmp_path / "var"},
                                    "log": {"format": "text"}})


@pytest.fixture
def hub(settings: Settings) -> Iterator[Hub]:
    h = Hub(settings, Database.from_url(settings.database_url))
    yield h
    h.close()


@pytest.fixture
async def client(hub: Hub, aiohttp_client):  # type: ignore[no-untyped-def]
    from hub.app import create_app

    return await aiohttp_client(create_app(hub))


@pytest.fixture
def catalog(hub: Hub) -> Hub:
    """The demo catalogue (see hub.demo.seed_catalogue): parameter group 1, PD type 11, LD type 101,
    concentrator type 2, three clusters, and head-ends 1 and 2 with a capacity of 20,000 each."""
    from hub.demo import seed_catalogue

    seed_catalogue(hub)
    return hub
