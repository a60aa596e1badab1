"""Insert IEEE 1888 values with the duplicate check inside the insert itself.

A WRITE must store a value for a (point, time) only if none is stored, accept the same value again
(idempotent) and refuse a different one. Checking first and inserting later, in separate
transactions, lets two gateways writing different values at the same instant both pass the check;
the second insert is then silently ignored and its writer told OK. Here the insert decides:
``INSERT ... ON CONFLICT DO NOTHING RETURNING point_id, time`` names exactly the rows this statement
stored, and the (point, time) keys it skipped are read back in the same transaction, after the
conflicting row is committed (PostgreSQL makes a conflicting insert wait for the other transaction;
SQLite holds its one write lock from the insert on). The caller compares the values and rolls the
whole WRITE back on a difference.

Rows are inserted in (point, time) order so that two writers of overlapping keys take their row
locks in the same order and cannot deadlock on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, tuple_

from hub.model import FiapValue
from hub.services.usage_writer import _Binder

VALUES: Any = FiapValue.__table__  # type: ignore[attr-defined]
COLUMNS = ("point_id", "time", "value", "number", "source", "received_at")
Row = tuple[str, datetime, str, float | None, str, datetime]
_SQLITE_ROWS = 2000
"""Rows per SQLite statement: six parameters a row, under SQLite's 32,766 parameters a statement."""
_PG_ROWS = 5000
_READ_BACK = 400


class ValueInserter(_Binder):
    """Plain tuples in, through the readings path's binder (timestamps converted once per distinct
    value; one statement over ``unnest`` arrays on PostgreSQL, multi-row VALUES on SQLite)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, VALUES)

    def insert_new(self, rows: Sequence[Row]) -> tuple[list[int], dict[int, str]]:
        """Insert ``rows`` (sorted by point and time) where no value is stored yet.

        Returns (indexes of the rows inserted, {index of a row not inserted: the value stored for
        its key}). The connection's transaction must stay open until the caller has judged the
        stored values: committing makes the inserts final, rolling back undoes them."""
        params = self._params(COLUMNS, rows)
        index = {(p[0], p[1]): i for i, p in enumerate(params)}
        returned: list[tuple[Any, Any]] = []
        step = _PG_ROWS if self.pg else _SQLITE_ROWS
        for lo in range(0, len(params), step):
            returned += self._insert_returning(params[lo:lo + step])
        inserted = sorted(index[key] for key in returned)
        if len(inserted) == len(rows):
            return inserted, {}
        skipped = sorted(set(range(len(rows))).difference(inserted))
        return inserted, self._stored_values(rows, skipped)

    def _insert_returning(self, params: list[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
        names = ", ".join(COLUMNS)
        tail = "ON CONFLICT DO NOTHING RETURNING point_id, time"
        if self.pg:
            sql = f"INSERT INTO {self.table.name} ({names}) SELECT {names} FROM {self._unnest(COLUMNS)} {tail}"
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(sql, tuple(list(col) for col in zip(*params, strict=True)), binary=True)
            return [(p, t) for p, t in cursor.fetchall()]
        row = "(" + ", ".join("?" * len(COLUMNS)) + ")"
        sql = f"INSERT INTO {self.table.name} ({names}) VALUES {', '.join([row] * len(params))} {tail}"
        flat = tuple(v for p in params for v in p)
        return [(p, t) for p, t in self.conn.exec_driver_sql(sql, flat).fetchall()]

    def _stored_values(self, rows: Sequence[Row], skipped: list[int]) -> dict[int, str]:
        """The values stored at the keys of ``skipped`` rows, read in the inserting transaction."""
        wanted = {(rows[i][0], rows[i][1]): i for i in skipped}
        keys = list(wanted)
        out: dict[int, str] = {}
        for lo in range(0, len(keys), _READ_BACK):
            q = select(VALUES.c.point_id, VALUES.c.time, VALUES.c.value) \
                .where(tuple_(VALUES.c.point_id, VALUES.c.time).in_(keys[lo:lo + _READ_BACK]))
            for p, t, v in self.conn.execute(q):
                out[wanted[(p, t)]] = v
        return out
