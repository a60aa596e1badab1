"""Insert IEEE 1888 values with the duplicate check inside the insert itself.

A WRITE must store a value for a (point, time) only if none is stored, accept the same value again
(idempotent) and refuse a different one. Checking first and inserting later, in separate
transactions, lets two gateways writing different values at the same instant both pass the check;
the second insert is then silently ignored and its writer told OK. Here the insert decides:
``INSERT ... ON CONFLICT DO NOTHING RETURNING point_id, time`` names exactly the rows this statement
stored, and the (point, time) keys it skipped are read back in the same transaction, after the
conflicting row is committed (PostgreSQL makes a conflicting insert wait for the other transaction;
SQLite holds its one write lock from the insert on). The caller compares the values and rolls the
whole WRITE back on a difference. On SQLite, where RETURNING costs a third of the insert, the
common case (nothing stored yet) is tried first without it, under a savepoint, and counted.

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
ROW_COLUMNS = ("point_id", "time", "value", "number")
Row = tuple[str, datetime, str, float | None]
"""One value to store: point, time, value as written, its number (None when not numeric)."""
_SQLITE_ROWS = 5000
"""Rows per SQLite statement: four parameters a row, under SQLite's 32,766 parameters a statement."""
_PG_ROWS = 5000
_READ_BACK = 400


class ValueInserter(_Binder):
    """Plain tuples in, through the readings path's binder (timestamps converted once per distinct
    value; one statement over ``unnest`` arrays on PostgreSQL, one multi-row VALUES on SQLite).
    ``source`` and ``received_at`` are the WRITE's own, bound once per statement."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, VALUES)

    def insert_new(self, rows: Sequence[Row], source: str,
                   received_at: datetime) -> tuple[list[int], dict[int, str]]:
        """Insert ``rows`` (sorted by point and time) where no value is stored yet.

        Returns (indexes of the rows inserted, {index of a row not inserted: the value stored for
        its key}). The connection's transaction must stay open until the caller has judged the
        stored values: committing makes the inserts final, rolling back undoes them."""
        to_time = self._convert("time") or _same
        params = [(p, to_time(t), v, n) for p, t, v, n in rows]
        received = (self._convert("received_at") or _same)(received_at)
        step = _PG_ROWS if self.pg else _SQLITE_ROWS
        chunks = [params[lo:lo + step] for lo in range(0, len(params), step)]
        if not self.pg and self._sqlite_all_new(chunks, source, received):
            return list(range(len(rows))), {}
        returned: list[tuple[Any, Any]] = []
        for chunk in chunks:
            returned += self._run(chunk, source, received, returning=True)
        if len(returned) == len(rows):
            return list(range(len(rows))), {}
        index = {(p[0], p[1]): i for i, p in enumerate(params)}
        inserted = sorted(index[key] for key in returned)
        skipped = sorted(set(range(len(rows))).difference(inserted))
        return inserted, self._stored_values(rows, skipped)

    def _sqlite_all_new(self, chunks: list[list[tuple[Any, ...]]], source: str, received: Any) -> bool:
        """SQLite, the common case first: insert without RETURNING (a third of the insert's time)
        and count the rows. All inserted: True. Otherwise the inserts are rolled back to a
        savepoint taken before them and False returned, for the RETURNING pass. SQLite has one
        writer at a time, from this insert to the commit, so the count cannot be raced."""
        cursor = self._cursor()
        try:
            cursor.execute("SAVEPOINT fiap_values")  # COMMIT or ROLLBACK of the WRITE ends it
            stored = 0
            for chunk in chunks:
                cursor.execute(self._sql(len(chunk), returning=False), self._flat(chunk, source, received))
                stored += cursor.rowcount
            if stored == sum(len(c) for c in chunks):
                return True
            cursor.execute("ROLLBACK TO fiap_values")
            return False
        finally:
            cursor.close()

    def _run(self, params: list[tuple[Any, ...]], source: str, received: Any,
             returning: bool) -> list[tuple[Any, Any]]:
        cursor = self._cursor()
        try:
            if self.pg:  # one statement over arrays, binary: no per-row round trip, no text quoting
                arrays = (list(col) for col in zip(*params, strict=True))
                cursor.execute(self._sql(len(params), returning), (source, received, *arrays), binary=True)
            else:
                cursor.execute(self._sql(len(params), returning), self._flat(params, source, received))
            return cursor.fetchall() if returning else []  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def _cursor(self) -> Any:
        return self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _sql(self, rows: int, returning: bool) -> str:
        into = f"INSERT INTO {self.table.name} ({', '.join(ROW_COLUMNS)}, source, received_at)"
        tail = "ON CONFLICT DO NOTHING" + (" RETURNING point_id, time" if returning else "")
        if self.pg:
            types = self.conn.dialect.type_compiler_instance.process
            scalars = f"%s::{types(self.table.c.source.type)}, %s::{types(self.table.c.received_at.type)}"
            return f"{into} SELECT {', '.join(ROW_COLUMNS)}, {scalars} FROM {self._unnest(ROW_COLUMNS)} {tail}"
        # one multi-row statement (executemany cannot return rows): ?1 and ?2 are the WRITE's
        # source and time; each plain ? takes the next number after the highest so far
        rest = "".join([", (?, ?, ?, ?, ?1, ?2)"] * (rows - 1))
        return f"{into} VALUES (?3, ?4, ?5, ?6, ?1, ?2){rest} {tail}"

    @staticmethod
    def _flat(params: list[tuple[Any, ...]], source: str, received: Any) -> list[Any]:
        return [source, received, *[v for p in params for v in p]]

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


def _same(value: Any) -> Any:
    return value
