"""Database engine and sessions for SQLite (embedded default, WAL) and PostgreSQL.

Services get a :class:`Database` and open short transactions with :meth:`Database.session`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import time

from sqlalchemy import DateTime, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    Naive datetimes are refused on the way in (they are ambiguous); values come back aware, in UTC.
    SQLite has no time zone type, so UTC is stored without an offset there.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must carry a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False},
                               pool_size=pool_size, max_overflow=pool_size)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":  # plain URL: use psycopg 3, the driver we ship
        url = str(parsed.set(drivername="postgresql+psycopg"))
    engine = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size)
    _ping_when_idle(engine)
    return engine


IDLE_BEFORE_PING_S = 5.0
"""A pooled server connection unused for this long is checked (``SELECT 1``) before it is handed out."""


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection's liveness only when it has sat idle, not on every checkout.

    A server restart or an idle-session timeout leaves dead connections in the pool; a ping on
    checkout finds them, and raising :class:`DisconnectionError` makes the pool discard the
    connection and hand out a fresh one. Pinging every checkout (``pool_pre_ping``) costs a round
    trip on each request of a busy hub, whose connections never sit idle; a connection that dies
    while busy raises a disconnect error, on which SQLAlchemy invalidates the whole pool."""

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_BEFORE_PING_S:
            return
        try:
            _ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means the connection is unusable
            raise DisconnectionError(f"pooled connection idle for {time.monotonic() - idle_since:.0f} s is dead") from exc


def _ping(dbapi_conn: Any) -> None:
    """``SELECT 1``, then end the transaction it opened (the caller may switch to autocommit)."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("SELECT 1")
    finally:
        cursor.close()
    dbapi_conn.rollback()


def _reader_twin(engine: Engine) -> Engine:
    """An engine on the same server for :meth:`Database.reader`: its pooled connections stay in
    autocommit and plan prepared statements once (generic plans)."""
    pool: Any = engine.pool
    twin = create_engine(engine.url, pool_size=getattr(pool, "size", lambda: 5)(),
                         max_overflow=getattr(pool, "_max_overflow", 0), isolation_level="AUTOCOMMIT",
                         connect_args={"options": "-c plan_cache_mode=force_generic_plan"})
    _ping_when_idle(twin)
    return twin


class Database:
    """The hub's store: an engine plus short-lived sessions that keep objects usable after commit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read_engine = None if engine.dialect.name == "sqlite" else _reader_twin(engine)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(make_engine(url, **kwargs))

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine of the store (the main one, and the reader pool's on a server)."""
        return (self.engine,) if self._read_engine is None else (self.engine, self._read_engine)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def reader(self) -> Connection:
        """A connection for hot, self-contained reads that need no transaction, of statements
        whose best plan does not depend on the values bound (equality on keys, not LIKE patterns).

        On a server store it comes from a small pool of its own whose connections are always in
        autocommit: no BEGIN and COMMIT round trips, and no switching a pooled connection in and out
        of autocommit on every checkout. The driver prepares a statement it has run five times on a
        connection; these connections then reuse one generic plan instead of planning it again
        with each call's values, which for a page of a concentrator's meters costs as much as
        running it. SQLite's driver opens no transaction for a SELECT, so there it is a plain
        connection of the main pool."""
        if self._read_engine is None:
            return self.engine.connect()
        return self._read_engine.connect()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
