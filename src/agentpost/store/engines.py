"""Database URLs and the settings every SQLite connection gets, in whichever process opens it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


def sqlite_file(url: str) -> str | None:
    """The SQLite database file of ``url`` (None for PostgreSQL or an in-memory database)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1]
    return path if path and path != ":memory:" else None


def open_write_lock(database_file: str) -> int:
    """The file every SQLite writer, in any process, locks around its transaction (write_lock)."""
    return os.open(database_file + ".writelock", os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def write_lock(lock_fd: int | None) -> Iterator[None]:
    """SQLite has one writer at a time; the processes on one database take turns here.

    SQLite's own busy handler sleeps with growing back-off while another process writes;
    a blocking flock wakes the waiter the moment the lock is released.
    """
    if lock_fd is None:
        yield
        return
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)


@contextmanager
def without_fsync(conn: sa.Connection) -> Iterator[None]:
    """SQLite WAL with synchronous=NORMAL for the transactions opened inside: each commit is
    atomic and survives a process crash, only an OS crash or power loss may take it back (the
    next FULL commit's fsync covers it too). The setting is per connection: FULL comes back
    for the next writer. Set on the driver's connection: through SQLAlchemy the PRAGMA would
    open the transaction."""
    pragma = conn.connection.cursor()
    pragma.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        pragma.execute("PRAGMA synchronous=FULL")
        pragma.close()


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
        # SQLite reads a connection's schema at its first statement naming a table (~0.7 ms): now,
        # while the connection opens, not in the first request or write group that uses it.
        cursor.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("writer") else "DEFERRED"
        # On the driver's cursor: through exec_driver_sql the BEGIN cost one more full statement
        # execution of SQLAlchemy's (~60 us here), for every transaction.
        cursor = conn.connection.cursor()
        try:
            cursor.execute(f"BEGIN {mode}")
        finally:
            cursor.close()
