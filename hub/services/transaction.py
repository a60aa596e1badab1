"""A transaction that outlives one service call: the steps of one inbound message, stored batch by
batch from worker threads and committed (or rolled back) once the whole message is known valid.
Callers outside the core hold it as an opaque handle and pass it back to the services."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from hub.db import Database


class Transaction:
    """One transaction of the store's, for calls made one after another (from any worker thread)
    that pass :attr:`conn` on; ended by exactly one of :meth:`commit` and :meth:`rollback`."""

    def __init__(self, db: Database) -> None:
        self.conn: Connection = db.engine.connect()
        self._tx = self.conn.begin()
        if self.conn.dialect.name == "postgresql":
            # Its statements are index probes and bulk moves of one batch; while a day is loaded the
            # planner's statistics lag and their cost estimates pass jit_above_cost, and compiling
            # took 250 ms a statement (a few ms to run).
            self.conn.exec_driver_sql("SET LOCAL jit = off")

    def commit(self) -> None:
        try:
            self._tx.commit()
        finally:
            self.conn.close()

    def rollback(self) -> None:
        try:
            self._tx.rollback()
        finally:
            self.conn.close()
