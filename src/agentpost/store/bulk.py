"""Lean multi-row INSERTs for the received-mail hot path: compiled once per dialect, values pre-converted.

SQLAlchemy's executemany runs every value of every row through its type processors; for the few
tables written per received message that bookkeeping cost more than SQLite's work. These inserts
use the same Core table definitions and compiled SQL, but convert values with one function per
column chosen up front.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from agentpost.store.tables import UTCDateTime

Converter = Callable[[Any], Any]
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32 is 32766; stay well below.
_SQLITE_MAX_VARIABLES = 30000


def _same(value: Any) -> Any:
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _json(value: Any) -> Any:
    if value is None:
        return None
    if value == []:
        return "[]"
    return _ENCODER.encode(value)


_last_time: tuple[datetime | None, str | None] = (None, None)


def _sqlite_time(value: datetime | None) -> str | None:
    # The storage format of SQLAlchemy's SQLite DateTime, so rows read back identically. Rows of
    # one group share their timestamps: remember the last one formatted.
    global _last_time
    if value is None:
        return None
    if _last_time[0] is value:
        return _last_time[1]
    # SQLAlchemy's "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d",
    # which isoformat writes faster than strftime.
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    _last_time = (value, text)
    return text


class BulkInsert:
    def __init__(self, table: sa.Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, tuple[Converter, ...]]] = {}

    def _prepare(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None, tuple[Converter, ...]]:
        compiled = self.table.insert().compile(dialect=dialect, column_keys=list(self.columns))
        order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        keys = order or self.columns
        converters: list[Converter] = []
        for key in keys:
            column_type = self.table.c[key].type
            if isinstance(column_type, sa.JSON):
                converters.append(_json)
            elif isinstance(column_type, UTCDateTime) and dialect.name == "sqlite":
                converters.append(_sqlite_time)
            else:
                converters.append(_same)
        return compiled.string, order, tuple(converters)

    def execute(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        name = conn.dialect.name
        prepared = self._compiled.get(name)
        if prepared is None:
            prepared = self._compiled[name] = self._prepare(conn.dialect)
        sql, order, converters = prepared
        if order is None:
            params = [{k: f(row[k]) for f, k in zip(converters, self.columns, strict=True)} for row in rows]
            conn.exec_driver_sql(sql, params)  # psycopg pipelines executemany
            return
        # Positional (SQLite): one multi-row INSERT per chunk. pysqlite's executemany releases
        # and re-takes the GIL around every row; under a busy event loop each re-take waits, so
        # one statement for many rows is several times faster in wall time.
        head, _, values = sql.partition(" VALUES ")
        per_row = max(1, _SQLITE_MAX_VARIABLES // len(order))
        for start in range(0, len(rows), per_row):
            chunk = rows[start : start + per_row]
            flat: list[Any] = []
            for row in chunk:
                flat.extend(f(row[k]) for f, k in zip(converters, order, strict=True))
            conn.exec_driver_sql(head + " VALUES " + ", ".join([values] * len(chunk)), tuple(flat))
