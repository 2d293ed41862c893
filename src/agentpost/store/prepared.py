"""Hot-path statements compiled once per dialect and run straight on the DBAPI cursor.

A Core ``conn.execute`` costs 100-150 us of Python before and after the database's own work
(cache-key generation, execution context, result wrapping, type processors); the same statement
on the driver's cursor costs a third of that. For the few statements every send runs, that
difference was a visible share of the send path's CPU. The SQL text still comes from the Core
table definitions, compiled for the connection's dialect (qmark for SQLite, pyformat for
psycopg), so the schema has one source of truth.

Only for statements whose parameters and result columns need no type conversion (strings and
integers): nothing here runs SQLAlchemy's bind or result processors.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


class Prepared:
    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _prepare(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None]:
        compiled = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        return compiled.string, order

    def rows(self, conn: sa.Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run in ``conn``'s transaction; every row as a plain tuple."""
        prepared = self._compiled.get(conn.dialect.name)
        if prepared is None:
            prepared = self._compiled[conn.dialect.name] = self._prepare(conn.dialect)
        sql, order = prepared
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, tuple(params[key] for key in order) if order is not None else params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        finally:
            cursor.close()
