"""Database URLs and the settings every SQLite connection gets, in whichever process opens it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event


def sync_url(url: str) -> str:
    """The synchronous driver for the same database (writer and reader threads, the write process)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def async_url(url: str) -> str:
    """Map a user-facing URL to the async driver SQLAlchemy needs."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def configure_sqlite(engine: sa.Engine) -> None:
    """WAL, durable commits and explicit BEGINs on every connection of ``engine``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control so a writer can BEGIN IMMEDIATE: a deferred
        # transaction that later upgrades to a writer fails with SQLITE_BUSY regardless of
        # busy_timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged message survives a
        # power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # SQLite checkpoints the WAL into the database every 1000 pages (its default).
        cursor.execute("PRAGMA wal_autocheckpoint=1000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("writer") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")
