"""Storing register reads as usage history: set-based, idempotent, one transaction per batch.

One entry point, :meth:`UsageWriter.store`, serves every way reads arrive (the scheduled cycle, a
backfill from the meters' memory, re-collection, pushed readings). Given the snapshots a batch
must account for (``expected``) and the values read, it

- logs every polled read in ``collection_log`` (a read already logged is ignored);
- inserts a ``normal`` usage row for a value at a snapshot that has no row yet, and a ``missing``
  row for an expected snapshot that has neither row nor value, each (when polled) with its empty
  quote row;
- fills a ``missing`` row that now has a value: ``register_value``, status ``recollected``, and the
  increment in ``recollected_increment``;
- leaves rows that already hold a value alone (so storing the same reads twice changes nothing);
- recomputes the increment of the first valued row after each newly filled stretch, whose
  predecessor changed, into its ``recollected_increment`` (flag ``recalculated``).

An increment is the register value less the latest earlier value of the same register (cumulative
registers only; none without an earlier value). It stays negative when the register went back
(a replaced meter) and is flagged so billing corrects it; it is flagged ``spans-gap`` when the
earlier value is not the previous slot's. So for every register the effective increments
(``coalesce(recollected_increment, increment)``) always add up to the register's advance.

All statements are plain INSERT ... ON CONFLICT DO NOTHING or keyed UPDATEs sent as one
executemany each; no ORM objects are built.

Pushed reads (``pushed=True``: what an edge hands in, 61968-9 MeterReadings, IEEE 1888 WRITE, MQTT
units) write the usage rows alone. Their ``collection_log`` row would repeat the usage row (the
value is its ``register_value``, the edge its ``source``, the time taken in its ``updated_at``), and
nothing reads the log: it is the scheduled collection's record of what each run read from its
head-end. Their quote rows are created by billing when it first imports, prices or corrects a slot
(:mod:`hub.services.billing`), not empty with every row: bulk pushes of a day for a fleet are the
hub's largest writes, and three indexed rows per reading cost three times one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, Table, func, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite

from hub.db import Database, UTCDateTime, utcnow
from hub.model import CollectionLog, QuoteHistory, UsageHistory
from hub.ports import SLOT_SECONDS, RegisterRead
from hub.services.quality import Quality
from hub.services.usage_rollup import mark_written

SLOT = timedelta(seconds=SLOT_SECONDS)
LOOKBACK = timedelta(days=1)
"""Earlier values are first looked for this far back; older ones by a slower search."""
INCREMENT_DIGITS = 6
"""Increments are rounded here, so a difference of two register values carries no binary noise."""
IN_CHUNK = 900
"""LD_IDs per IN list (well under every backend's bound-parameter limit)."""

USAGE: Table = UsageHistory.__table__  # type: ignore[attr-defined]
QUOTE: Table = QuoteHistory.__table__  # type: ignore[attr-defined]
LOG: Table = CollectionLog.__table__  # type: ignore[attr-defined]

Key = tuple[str, int, datetime]
Series = tuple[str, int]
Read = tuple[str, int, datetime, float]
"""A register read as a plain tuple (ld_id, sub_number, measured_time, value): what bulk pushes
hand over, where a :class:`hub.ports.RegisterRead` per value would cost more than storing it."""


@dataclass(slots=True)
class _Row:
    value: float | None
    status: str
    increment: float | None
    recollected_increment: float | None
    quality: int


@dataclass
class WriteResult:
    """What one :meth:`UsageWriter.store` did. ``statuses`` counts the final status of every
    expected snapshot (``normal``, ``missing``, ``recollected``), whoever stored it."""

    inserted: int = 0
    missing_inserted: int = 0
    filled: int = 0
    recalculated: int = 0
    duplicates: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    filled_keys: list[Key] = field(default_factory=list)
    rows: list[tuple[str, int, datetime, float | None, float | None, str]] = field(default_factory=list)
    """With ``keep_rows``: every expected or filled snapshot as it now stands (ld_id, sub_number,
    measured_time, register value, effective increment, status): what diagnosis reads."""

    def add(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.missing_inserted += other.missing_inserted
        self.filled += other.filled
        self.recalculated += other.recalculated
        self.duplicates += other.duplicates
        self.statuses.update(other.statuses)
        self.filled_keys.extend(other.filled_keys)
        self.rows.extend(other.rows)


def utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: timestamps must carry a time zone")
    return dt.astimezone(UTC)


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of ``rows`` in one executemany, on either backend."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))


class _Binder:
    """Set-based writes of plain tuples to one table.

    Values are converted as SQLAlchemy would, once per distinct value for timestamps (a batch holds
    a handful of distinct times and tens of thousands of rows). SQLite gets one executemany of the
    statement; PostgreSQL gets one statement over ``unnest`` of one array per column (a single
    round trip, where an executemany would pay one per row)."""

    def __init__(self, conn: Connection, table: Table) -> None:
        self.conn, self.table = conn, table
        self.pg = conn.dialect.name == "postgresql"
        self._procs: dict[str, Any] = {}

    def _convert(self, column: str) -> Callable[[Any], Any] | None:
        if column not in self._procs:
            col = self.table.c[column]
            proc = col.type._cached_bind_processor(self.conn.dialect)  # noqa: SLF001 - SQLAlchemy's own conversion
            if proc is not None and isinstance(col.type, UTCDateTime | DateTime):
                memo: dict[Any, Any] = {}

                def cached(value: Any, proc: Any = proc, memo: dict[Any, Any] = memo) -> Any:
                    if value is None:
                        return None
                    out = memo.get(value)
                    if out is None:
                        out = memo[value] = proc(value)
                    return out
                self._procs[column] = cached
            else:
                self._procs[column] = proc
        return self._procs[column]

    def times(self, values: Iterable[datetime]) -> dict[datetime, Any]:
        """The driver's form of each of ``values`` (aware UTC datetimes), for rows built already
        converted (see ``converted``)."""
        convert = self._convert("updated_at") or (lambda value: value)
        return {t: convert(t) for t in values}

    def _params(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        converts = [(i, f) for i, c in enumerate(columns) if (f := self._convert(c)) is not None]
        if not converts:
            return [tuple(row) for row in rows]
        params = []
        for row in rows:
            values = list(row)
            for i, f in converts:
                values[i] = f(values[i])
            params.append(tuple(values))
        return params

    def _unnest(self, columns: Sequence[str]) -> str:
        compile_type = self.conn.dialect.type_compiler_instance.process
        arrays = ", ".join(f"%b::{compile_type(self.table.c[c].type)}[]" for c in columns)
        return f"unnest({arrays}) AS v({', '.join(columns)})"

    def _run(self, sql: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], converted: bool = False) -> None:
        params = rows if converted else self._params(columns, rows)
        if not params:
            return
        if self.pg:  # binary parameters: arrays of text dumped without quoting and escaping
            cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(sql, tuple(list(col) for col in zip(*params, strict=True)), binary=True)
        else:
            self.conn.exec_driver_sql(sql, params)

    def insert_ignore(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], converted: bool = False) -> None:
        """INSERT ... ON CONFLICT DO NOTHING; with ``converted`` the rows hold driver values already
        (timestamps from :meth:`times`), so they are sent as they are."""
        names = ", ".join(columns)
        if self.pg and converted:
            self._copy_ignore(columns, rows)
            return
        if self.pg:
            sql = f"INSERT INTO {self.table.name} ({names}) SELECT {names} FROM {self._unnest(columns)} " \
                  "ON CONFLICT DO NOTHING"
        else:
            sql = f"INSERT INTO {self.table.name} ({names}) VALUES ({', '.join('?' * len(columns))}) " \
                  "ON CONFLICT DO NOTHING"
        self._run(sql, columns, rows, converted)

    def _copy_ignore(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """PostgreSQL: the rows COPYed (binary) into a temporary table of the session, then moved with
        INSERT ... SELECT ... ON CONFLICT DO NOTHING. COPY formats rows in the driver's C code, where
        the arrays for ``unnest`` are built element by element in Python (six times slower)."""
        if not rows:
            return
        table, names = self.table.name, ", ".join(columns)
        bulk = f"bulk_{table}"
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {bulk} (LIKE {table})")  # gone if this rolls back
        info = self.conn.connection.info
        types = info.get(("bulk column types", table))
        if types is None:
            types = info[("bulk column types", table)] = dict(cursor.execute(
                "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                (table,)).fetchall())
        with cursor.copy(f"COPY {bulk} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([types[c] for c in columns])
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {bulk} ON CONFLICT DO NOTHING; "
                       f"DELETE FROM {bulk}")

    def update(self, set_columns: Sequence[str], key_columns: Sequence[str], rows: Sequence[Sequence[Any]],
               where: str = "") -> None:
        """UPDATE ... SET ``set_columns`` WHERE ``key_columns`` match (plus ``where``, on the table's
        own columns), one row per tuple of set values then key values."""
        table = self.table.name
        if self.pg:
            sets = ", ".join(f"{c} = v.{c}" for c in set_columns)
            keys = " AND ".join(f"{table}.{c} = v.{c}" for c in key_columns)
            sql = f"UPDATE {table} SET {sets} FROM {self._unnest([*set_columns, *key_columns])} WHERE {keys}{where}"
        else:
            sets = ", ".join(f"{c} = ?" for c in set_columns)
            keys = " AND ".join(f"{c} = ?" for c in key_columns)
            sql = f"UPDATE {table} SET {sets} WHERE {keys}{where}"
        self._run(sql, [*set_columns, *key_columns], rows)


_PG_KEYS = ("(SELECT l.ld_id, s.sub_number FROM unnest(%s::text[]) AS l(ld_id) "
            "CROSS JOIN unnest(%s::int[]) AS s(sub_number)) AS k")
"""Every register of the batch's LD_IDs (a batch reads the same registers of each of its devices)."""
_PG_VALUES = "u.register_value, u.status, u.increment, u.recollected_increment, u.quality"


class _Times:
    """Stored timestamps read back as aware UTC, converted once per distinct value."""

    def __init__(self) -> None:
        self._memo: dict[datetime, datetime] = {}

    def __call__(self, value: datetime) -> datetime:
        out = self._memo.get(value)
        if out is None:
            out = self._memo[value] = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return out


class _Aware:
    """Given timestamps as one UTC object per instant, checked (aware) once per distinct value: a
    batch holds a handful of instants and tens of thousands of rows."""

    def __init__(self) -> None:
        self.memo: dict[datetime, datetime] = {}
        """Given value -> its UTC object, for lookups inline in a caller's loop."""

    def __call__(self, value: datetime) -> datetime:
        out = self.memo.get(value)  # a naive value never equals an aware key, so it is checked
        if out is None:
            out = utc(value)
            out = self.memo.setdefault(out, out)
            self.memo[value] = out
        return out


def _raw_time(column: Any) -> Any:
    """A timestamp column read without the per-value conversion of :class:`hub.db.UTCDateTime`."""
    return type_coerce(column, DateTime(timezone=True))


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class UsageWriter:
    def __init__(self, db: Database) -> None:
        self.db = db

    def store(self, *, expected: Iterable[Key], reads: Iterable[RegisterRead] = (), values: Iterable[Read] = (),
              cumulative: Callable[[str, int], bool], source: str, he_id: int | None = None,
              run_id: int | None = None, fill_status: str = "recollected", keep_rows: bool = False,
              pushed: bool = False, conn: Connection | None = None) -> WriteResult:
        """Store one batch in one transaction (see the module docstring). Times must be aware.

        The values come as ``reads`` or as plain tuples in ``values`` (or both); the first value of
        a snapshot counts. ``fill_status`` is the status a missing row takes when a value arrives
        for it; with ``keep_rows`` the result lists the batch's rows as stored (no read back needed).
        ``pushed`` values (an edge's, not polled) get no ``collection_log`` row and no empty quote
        row (see the module docstring). With ``conn`` the batch is written in that connection's open
        transaction, which the caller commits or rolls back (several batches as one)."""
        if pushed and not expected and not reads and isinstance(values, list) and values:
            with self._transaction(conn) as c:
                fresh = self._store_fresh(c, values, cumulative, source)
            if fresh is not None:
                return fresh
        norm = _Aware()
        given: dict[Key, float] = {}
        for r in reads:
            given.setdefault((r.ld_id, r.sub_number, norm(r.measured_time)), float(r.value))
        memo = norm.memo
        for ld_id, sub, t, value in values:
            aware = memo.get(t)
            given.setdefault((ld_id, sub, aware if aware is not None else norm(t)), float(value))
        values = given
        wanted = {(ld, sub, norm(t)) for ld, sub, t in expected}
        result = WriteResult()
        keys = wanted | values.keys()
        if not keys:
            return result
        now = utcnow()
        with self._transaction(conn) as conn:
            times = sorted({k[2] for k in keys})
            existing = self._rows_between(conn, keys, times[0], times[-1])
            new_values = {k: v for k, v in values.items() if k not in existing or existing[k].value is None}
            result.duplicates = len(values) - len(new_values)
            chains = self._chains(conn, new_values, existing, cumulative)

            usage = _Binder(conn, USAGE)
            at = usage.times([*times, now])  # rows are built with the driver's timestamps
            now_at = at[now]
            inserts: list[tuple[Any, ...]] = []
            quotes: list[tuple[Any, ...]] = []
            fills: list[tuple[Any, ...]] = []
            recalcs: list[tuple[Any, ...]] = []
            for key, (increment, quality, kind) in chains.items():
                ld_id, sub, t = key
                if kind == "insert":
                    t_at = at[t]
                    inserts.append((ld_id, sub, t_at, new_values[key], increment, "normal", quality, None, source,
                                    now_at))
                    if not pushed:
                        quotes.append((ld_id, sub, t_at, source, False, now_at))
                elif kind == "fill":
                    fills.append((new_values[key], increment, quality, fill_status, source, now, ld_id, sub, t))
                    result.filled_keys.append(key)
                else:
                    recalcs.append((increment, quality, now, ld_id, sub, t))
            result.inserted = len(inserts)
            missing_quality = int(Quality.MISSING)
            for ld_id, sub, t in wanted - existing.keys() - values.keys():
                inserts.append((ld_id, sub, at[t], None, None, "missing", missing_quality, None, source, now_at))
                if not pushed:
                    quotes.append((ld_id, sub, at[t], source, False, now_at))
            result.missing_inserted = len(inserts) - result.inserted

            if not pushed:
                _Binder(conn, LOG).insert_ignore(
                    ("ld_id", "sub_number", "measured_time", "value", "he_id", "source", "run_id", "received_at"),
                    [(ld_id, sub, at[t], v, he_id, source, run_id, now_at) for (ld_id, sub, t), v in new_values.items()],
                    converted=True)
            usage.insert_ignore(
                ("ld_id", "sub_number", "measured_time", "register_value", "increment", "status", "quality",
                 "recollected_increment", "source", "updated_at"), inserts, converted=True)
            _Binder(conn, QUOTE).insert_ignore(
                ("ld_id", "sub_number", "measured_time", "source", "corrected", "updated_at"), quotes, converted=True)
            usage.update(("register_value", "recollected_increment", "quality", "status", "source", "updated_at"),
                         ("ld_id", "sub_number", "measured_time"), fills,
                         where=" AND usage_history.status = 'missing'")
            usage.update(("recollected_increment", "quality", "updated_at"), ("ld_id", "sub_number", "measured_time"),
                         recalcs)
            if inserts or fills or recalcs:
                mark_written(conn, times)  # the public aggregates' rollup of these slots is stale now

        result.filled, result.recalculated = len(fills), len(recalcs)
        keep = result.rows.append if keep_rows else None
        for key in wanted:
            row = existing.get(key)
            if row is not None and row.value is not None:
                result.statuses[row.status] += 1
                if keep:
                    keep((*key, row.value, _effective(row), row.status))
            elif key in new_values:
                status = "normal" if row is None else fill_status
                result.statuses[status] += 1
                if keep:
                    keep((*key, new_values[key], chains[key][0], status))
            else:
                result.statuses["missing"] += 1
                if keep:
                    keep((*key, None, None, "missing"))
        if keep:
            for key in result.filled_keys:
                if key not in wanted:
                    keep((*key, new_values[key], chains[key][0], fill_status))
        return result

    def _store_fresh(self, conn: Connection, values: list[Read], cumulative: Callable[[str, int], bool],
                     source: str) -> WriteResult | None:
        """:meth:`store` of pushed ``values`` sorted by key (as :meth:`CollectionService.ingest_values`
        hands them) whose registers have no row between the first and last time and no valued row
        after: the bulk push of a new day, stored in one loop over the values (the increments as
        :func:`_stretch` computes them, each row built as it is computed). None, with nothing
        written, when they are not such values: :meth:`store` then takes the general way."""
        norm = _Aware()
        memo = norm.memo
        given: list[tuple[str, int, datetime, float]] = []
        last: tuple[str, int, datetime] | None = None
        for ld_id, sub, t, value in values:
            aware = memo.get(t)
            key = (ld_id, sub, aware if aware is not None else norm(t))
            if last is not None and key <= last:
                if key == last:
                    continue  # a second value of one snapshot: the first counts
                return None  # not sorted
            last = key
            given.append((*key, float(value)))
        times = sorted({t for _, _, t, _ in given})
        lo, hi = times[0], times[-1]
        series = set({(ld_id, sub): None for ld_id, sub, _, _ in given})
        if self._rows_between(conn, {(ld_id, sub, lo) for ld_id, sub in series}, lo, hi):
            return None
        latest = self._latest_time(conn)
        if latest is not None and latest > hi and self._valued_near(conn, series, hi, before=False):
            return None
        before = self._valued_near(conn, series, lo, before=True)

        now = utcnow()
        usage = _Binder(conn, USAGE)
        at = usage.times([*times, now])  # rows are built with the driver's timestamps
        now_at = at[now]
        slot_before = {t: t - SLOT for t in times}
        inserts: list[tuple[Any, ...]] = []
        append = inserts.append
        current: Series | None = None
        counts = False
        prev_t: datetime | None = None
        prev_v: float | None = None
        for ld_id, sub, t, value in given:
            if (ld_id, sub) != current:
                current = (ld_id, sub)
                counts = cumulative(ld_id, sub)
                first = before.get(current)
                prev_t, prev_v = (first[0], first[1].value) if first is not None else (None, None)
            flags = _VALID
            increment = None
            if counts and prev_v is not None:
                increment = round(value - prev_v, INCREMENT_DIGITS)
                if prev_t != slot_before[t]:
                    flags |= _SPANS_GAP
                if increment < 0:
                    flags |= _NEGATIVE
            append((ld_id, sub, at[t], value, increment, "normal", flags, None, source, now_at))
            prev_t, prev_v = t, value
        usage.insert_ignore(
            ("ld_id", "sub_number", "measured_time", "register_value", "increment", "status", "quality",
             "recollected_increment", "source", "updated_at"), inserts, converted=True)
        mark_written(conn, times)  # the public aggregates' rollup of these slots is stale now
        return WriteResult(inserted=len(inserts))

    @contextmanager
    def _transaction(self, conn: Connection | None) -> Iterator[Connection]:
        """``conn`` as it is (its owner ends the transaction), else a transaction of its own."""
        if conn is not None:
            yield conn
            return
        with self.db.session() as s:
            yield s.connection()

    # reading what is there ---------------------------------------------------------------------

    @staticmethod
    def _rows_between(conn: Connection, keys: set[Key], lo: datetime, hi: datetime) -> dict[Key, _Row]:
        """The stored rows of the batch's registers between ``lo`` and ``hi`` (inclusive)."""
        ld_ids = sorted({k[0] for k in keys})
        subs = sorted({k[1] for k in keys})
        c = USAGE.c
        norm = _Times()
        out: dict[Key, _Row] = {}
        if conn.dialect.name == "postgresql":
            # One primary-key range per register (the subquery kept apart by OFFSET 0, so its plan is
            # that probe): as a plain join the planner may take the time index, its statistics lagging
            # a bulk load of the window, and read the whole fleet's rows of the window for every batch.
            rows = conn.exec_driver_sql(
                f"SELECT k.ld_id, k.sub_number, u.measured_time, {_PG_VALUES} FROM {_PG_KEYS} "
                "CROSS JOIN LATERAL (SELECT * FROM usage_history u WHERE u.ld_id = k.ld_id "
                "AND u.sub_number = k.sub_number AND u.measured_time BETWEEN %s AND %s OFFSET 0) u",
                (ld_ids, subs, lo, hi)).fetchall()
            for ld_id, sub, t, *rest in rows:
                out[(ld_id, sub, norm(t))] = _Row(*rest)
            return out
        time_cond = (c.measured_time == lo) if lo == hi else c.measured_time.between(lo, hi)
        for chunk in _chunks(ld_ids):
            for ld_id, sub, t, value, status, inc, rinc, quality in conn.execute(
                    select(c.ld_id, c.sub_number, _raw_time(c.measured_time), c.register_value, c.status, c.increment,
                           c.recollected_increment, c.quality)
                    .where(c.ld_id.in_(chunk), c.sub_number.in_(subs), time_cond)):
                out[(ld_id, sub, norm(t))] = _Row(value, status, inc, rinc, quality)
        return out

    @staticmethod
    def _valued_near(conn: Connection, series: set[Series], edge: datetime,
                     before: bool) -> dict[Series, tuple[datetime, _Row]]:
        """Per register, the latest valued row before ``edge`` (or the earliest after it): first the
        adjacent slot, then within :data:`LOOKBACK`, then anywhere."""
        c = USAGE.c
        norm = _Times()
        cols = (c.ld_id, c.sub_number, _raw_time(c.measured_time), c.register_value, c.status, c.increment,
                c.recollected_increment, c.quality)
        found: dict[Series, tuple[datetime, _Row]] = {}
        if conn.dialect.name == "postgresql":  # one index probe per register, however far back
            rows = conn.exec_driver_sql(
                f"SELECT k.ld_id, k.sub_number, u.measured_time, {_PG_VALUES} FROM {_PG_KEYS} "
                "CROSS JOIN LATERAL (SELECT * FROM usage_history u WHERE u.ld_id = k.ld_id "
                "AND u.sub_number = k.sub_number AND u.register_value IS NOT NULL "
                f"AND u.measured_time {'<' if before else '>'} %s "
                f"ORDER BY u.measured_time {'DESC' if before else 'ASC'} LIMIT 1) u",
                (sorted({s[0] for s in series}), sorted({s[1] for s in series}), edge)).fetchall()
            for ld_id, sub, t, *rest in rows:
                found[(ld_id, sub)] = (norm(t), _Row(*rest))
            return found
        step = -SLOT if before else SLOT
        far = edge - LOOKBACK if before else edge + LOOKBACK

        def keep(left: set[Series], rows: Iterable[Any]) -> None:
            for ld_id, sub, t, *rest in rows:
                k = (ld_id, sub)
                if k in left:
                    t = norm(t)
                    if k not in found or (t > found[k][0] if before else t < found[k][0]):
                        found[k] = (t, _Row(*rest))

        def look(left: set[Series], cond: Any) -> None:
            subs = sorted({s[1] for s in left})
            for chunk in _chunks(sorted({s[0] for s in left})):
                keep(left, conn.execute(select(*cols).where(
                    c.ld_id.in_(chunk), c.sub_number.in_(subs), c.register_value.is_not(None), cond)))

        look(series, c.measured_time == edge + step)
        left = series - found.keys()
        if left:
            look(left, c.measured_time.between(far, edge + step) if before
                 else c.measured_time.between(edge + step, far))
        left = series - found.keys()
        if left:  # rare: nothing valued within the lookback; one grouped search, then the rows
            agg = func.max if before else func.min
            bound = c.measured_time < far if before else c.measured_time > far
            for chunk in _chunks(sorted({s[0] for s in left})):
                edges = (select(c.ld_id, c.sub_number, agg(c.measured_time).label("t"))
                         .where(c.ld_id.in_(chunk), c.register_value.is_not(None), bound)
                         .group_by(c.ld_id, c.sub_number).subquery())
                keep(left, conn.execute(select(*cols).join(
                    edges, (edges.c.ld_id == c.ld_id) & (edges.c.sub_number == c.sub_number)
                    & (edges.c.t == c.measured_time))))
        return found

    @staticmethod
    def _latest_time(conn: Connection) -> datetime | None:
        return conn.execute(select(func.max(USAGE.c.measured_time))).scalar()

    # increments --------------------------------------------------------------------------------

    def _chains(self, conn: Connection, new_values: dict[Key, float], existing: dict[Key, _Row],
                cumulative: Callable[[str, int], bool]) -> dict[Key, tuple[float | None, int, str]]:
        """Increment, quality and kind of write (insert, fill, recalc) for every row the new values
        touch: the new rows themselves and the first valued row after each new stretch."""
        by_series: dict[Series, list[datetime]] = {}
        for ld_id, sub, t in new_values:
            by_series.setdefault((ld_id, sub), []).append(t)
        if not by_series:
            return {}
        times = sorted({k[2] for k in new_values})
        lo, hi = times[0], times[-1]
        series = set(by_series)
        before = self._valued_near(conn, series, lo, before=True)
        latest = self._latest_time(conn)
        after = self._valued_near(conn, series, hi, before=False) if latest is not None and latest > hi else {}
        stored: dict[Series, dict[datetime, _Row]] = {}
        for (ld_id, sub, t), row in existing.items():
            if row.value is not None and (ld_id, sub) in series:
                stored.setdefault((ld_id, sub), {})[t] = row

        out: dict[Key, tuple[float | None, int, str]] = {}
        for key, new_times in by_series.items():
            ld_id, sub = key
            counts = cumulative(ld_id, sub)
            points, first, nxt = stored.get(key), before.get(key), after.get(key)
            if len(new_times) == 1 and points is None and nxt is None:  # the scheduled cycle's case
                t = new_times[0]
                full = (ld_id, sub, t)
                out[full] = _step(first[0] if first else None, first[1].value if first else None, t,
                                  new_values[full], counts, full in existing)
                continue
            if points is None and nxt is None:  # a pushed stretch with nothing stored in or after it
                _stretch(out, key, sorted(new_times), first, new_values, existing, counts)
                continue
            timeline = dict(points or {})  # time -> stored valued row
            for near in (first, nxt):
                if near is not None:
                    timeline.setdefault(near[0], near[1])
            fresh = set(new_times)
            prev_t: datetime | None = None
            prev_v: float | None = None
            prev_new = False
            for t in sorted(timeline.keys() | fresh):
                is_new = t in fresh
                full = (ld_id, sub, t)
                value = new_values[full] if is_new else timeline[t].value
                if is_new:
                    out[full] = _step(prev_t, prev_v, t, value, counts, full in existing)
                elif prev_new and counts:
                    increment, flags, _ = _step(prev_t, prev_v, t, value, counts, False)
                    out[full] = (increment, _recalc_quality(timeline[t], flags), "recalc")
                prev_t, prev_v, prev_new = t, value, is_new
        return out


_VALID, _RECOLLECTED = int(Quality.VALID), int(Quality.RECOLLECTED)
_SPANS_GAP, _NEGATIVE = int(Quality.SPANS_GAP), int(Quality.NEGATIVE_INCREMENT)


def _effective(row: _Row) -> float | None:
    return row.recollected_increment if row.recollected_increment is not None else row.increment


def _step(prev_t: datetime | None, prev_v: float | None, t: datetime, value: float | None, counts: bool,
          fill: bool) -> tuple[float | None, int, str]:
    """Increment, flags and write kind of the value at ``t`` after the valued row (prev_t, prev_v)."""
    flags = _VALID | (_RECOLLECTED if fill else 0)
    increment = None
    if counts and prev_t is not None and prev_v is not None and value is not None:
        increment = round(value - prev_v, INCREMENT_DIGITS)
        if prev_t != t - SLOT:
            flags |= _SPANS_GAP
        if increment < 0:
            flags |= _NEGATIVE
    return increment, flags, "fill" if fill else "insert"


def _stretch(out: dict[Key, tuple[float | None, int, str]], series: Series, times: list[datetime],
             first: tuple[datetime, _Row] | None, new_values: dict[Key, float], existing: dict[Key, _Row],
             counts: bool) -> None:
    """:func:`_step` over the sorted new ``times`` of one register that has no stored value among
    or after them (only, perhaps, ``first`` before): the bulk push's case, one loop without calls."""
    ld_id, sub = series
    prev_t, prev_v = (first[0], first[1].value) if first is not None else (None, None)
    for t in times:
        full = (ld_id, sub, t)
        value = new_values[full]
        fill = full in existing
        flags = _VALID | _RECOLLECTED if fill else _VALID
        increment = None
        if counts and prev_t is not None and prev_v is not None:
            increment = round(value - prev_v, INCREMENT_DIGITS)
            if prev_t != t - SLOT:
                flags |= _SPANS_GAP
            if increment < 0:
                flags |= _NEGATIVE
        out[full] = (increment, flags, "fill" if fill else "insert")
        prev_t, prev_v = t, value


def _recalc_quality(row: _Row, flags: int) -> int:
    """Flags of a stored valued row whose increment is recomputed: keep what is not about the
    increment (recollected, edited, questionable...), refresh gap and sign, mark recalculated."""
    keep = Quality(row.quality) & ~(Quality.SPANS_GAP | Quality.NEGATIVE_INCREMENT | Quality.MISSING)
    if row.status == "normal":
        keep |= Quality.RECALCULATED
    return int(keep) | flags
