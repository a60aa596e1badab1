"""Pooled PostgreSQL connections: checked only after sitting idle, and replaced when found dead.

A busy hub must not pay a liveness round trip on every request, yet a server restart or an idle
session timeout must not turn into failed requests once the hub is used again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

import hub.db
from hub.db import Database


@pytest.fixture
def pg(pg_database: str) -> Iterator[Database]:
    db = Database.from_url(pg_database, pool_size=1)
    yield db
    db.dispose()


def _backend_pid(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_in_steady_use_is_not_pinged(pg: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    pings: list[int] = []
    _backend_pid(pg)  # open the pooled connection
    monkeypatch.setattr(hub.db, "_ping", lambda conn: pings.append(1) or _real_ping(conn))
    for _ in range(5):
        assert pg.ping()
    assert pings == []


def test_a_connection_idle_past_the_threshold_is_pinged_first(pg: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    pings: list[int] = []
    _backend_pid(pg)
    monkeypatch.setattr(hub.db, "IDLE_BEFORE_PING_S", 0.0)
    monkeypatch.setattr(hub.db, "_ping", lambda conn: pings.append(1) or _real_ping(conn))
    assert pg.ping()
    assert pings == [1]


def test_a_dead_idle_connection_is_replaced_without_failing_the_caller(pg: Database,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend_pid(pg)
    with Database.from_url(pg.engine.url.render_as_string(hide_password=False)).engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        admin.commit()
    monkeypatch.setattr(hub.db, "IDLE_BEFORE_PING_S", 0.0)
    with pg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # the search reader's form
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert _backend_pid(pg) != first


def test_after_an_idle_ping_a_reader_can_still_switch_to_autocommit(pg: Database,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _backend_pid(pg)
    monkeypatch.setattr(hub.db, "IDLE_BEFORE_PING_S", 0.0)
    with pg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    with pg.session() as s:  # and a transaction after it
        assert s.execute(text("SELECT 2")).scalar_one() == 2


_real_ping = hub.db._ping
