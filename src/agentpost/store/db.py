"""Database engine: SQLite (WAL, durable commits) or PostgreSQL, one code path, and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentpost.store import write_process
from agentpost.store.engines import (
    async_url,
    configure_sqlite,
    open_write_lock,
    sqlite_file,
    sync_url,
    without_fsync,
    write_lock,
)
from agentpost.store.write_process import WriteChannel, WriterUnavailable

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")


# revision = "0013" / down_revision: str | None = "0012" (both alembic templates).
_REVISION_LINE = re.compile(r"""^(down_revision|revision)\s*(?::[^=\n]*)?=\s*['"]?([\w-]+)""", re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision of migrations/versions (the one no other revises), read from the files
    as alembic would; None if that is not one revision (then alembic decides)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    files = list((MIGRATIONS / "versions").glob("*.py"))
    for path in files:
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            (revisions if name == "revision" else revised).add(value)
    heads = revisions - revised
    # A file whose revision was not understood must not make an older one look newest.
    return heads.pop() if len(heads) == 1 and len(revisions) == len(files) else None


READERS = 4  # reader threads (and pooled connections) for run_read


class Database:
    """Owns the engine. ``write()`` opens a writer transaction, ``read()`` a reader one."""

    def __init__(self, url: str) -> None:
        self.user_url = url
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if self.file_path is not None:
                Path(self.file_path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            # Every aiosqlite connection is a thread: a pool that overflows under concurrent
            # requests and closes the extra connections again churns threads (measured: ~10% of
            # the CPU of an API send burst). Keep enough open.
            kwargs["pool_size"] = 24
            kwargs["max_overflow"] = 8
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            configure_sqlite(self.engine.sync_engine)
        # The hot write path (received mail, in groups) runs whole transactions in one thread
        # hop on a synchronous engine: per statement hops through the async driver cost more
        # than the statements themselves.
        self._sync_engine: sa.Engine | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        # Hot reads (the send path) run as one synchronous transaction per thread hop, like writes.
        self._read_engine: sa.Engine | None = None
        self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="db-reader")
        self._lock_fd = open_write_lock(self.file_path) if self.file_path is not None else None
        # SQLite allows one writer: serialise writers in-process instead of spinning on SQLITE_BUSY.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # serve's write process (write_process.py), when it runs one: run_write goes there.
        self._channel: WriteChannel | None = None

    @property
    def file_path(self) -> str | None:
        """The SQLite database file (None for PostgreSQL or an in-memory database)."""
        return sqlite_file(self.url)

    async def attach_writer(self, channel: WriteChannel, answer_within: float = 30.0) -> bool:
        """Send run_write's transactions to the write process on ``channel`` from now on; False
        (and this process writes itself) when it does not answer."""
        await channel.start()
        try:
            await asyncio.wait_for(channel.call(write_process.ping, (), False), answer_within)
        except Exception as exc:
            log.warning("the SQLite write process did not answer (%s): this process writes itself", exc)
            await channel.close()
            return False
        self._channel = channel
        return True

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed on normal exit."""
        if self._write_lock is not None:
            async with self._write_lock:
                # Take the cross-process lock too: without it a writer in another process finds
                # the database busy and SQLite's busy handler sleeps in steps of up to 100 ms.
                if self._lock_fd is not None:
                    await asyncio.get_running_loop().run_in_executor(
                        self._writer, fcntl.flock, self._lock_fd, fcntl.LOCK_EX
                    )
                try:
                    async with self.engine.connect() as conn:
                        conn = await conn.execution_options(writer=True)
                        async with conn.begin():
                            yield conn
                finally:
                    if self._lock_fd is not None:
                        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        else:
            async with self.engine.begin() as conn:
                yield conn

    def _sync(self) -> sa.Engine:
        if self._sync_engine is None:
            url = sync_url(self.user_url)
            engine = sa.create_engine(
                url, pool_size=1, max_overflow=0, connect_args={"timeout": 30} if self.is_sqlite else {}
            )
            if self.is_sqlite:
                configure_sqlite(engine)
            self._sync_engine = engine
        return self._sync_engine

    def _run_sync(self, fn: Callable[..., T], args: tuple[Any, ...], durable: bool = True) -> T:
        # The pool checkout and check-in happen outside the cross-process lock: every process's
        # writers wait while it is held, so it covers the transaction and nothing else.
        with self._sync().connect() as conn, write_lock(self._lock_fd):
            conn = conn.execution_options(writer=True)
            if durable or not self.is_sqlite:
                with conn.begin():
                    if not durable:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    return fn(conn, *args)
            with without_fsync(conn), conn.begin():
                return fn(conn, *args)

    async def run_write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Run ``fn(connection, *args)`` as one read-write transaction in the writer thread.

        ``durable=False`` commits without waiting for the disk (no fsync on SQLite,
        ``synchronous_commit = off`` on PostgreSQL): still atomic, and it survives a crash of
        our process, but an OS crash or power loss may undo it. Only for writes nobody has been
        promised, whose loss costs a repeat, never data: a queue item's lease, a delivery's
        outcome (the item would be delivered again). Anything acknowledged to a client (a 250
        at the MX, an API send's answer) is committed durably.
        """
        channel = self._channel
        if channel is not None and channel.open:
            try:
                return await channel.call(fn, args, durable)  # type: ignore[no-any-return]
            except WriterUnavailable:
                pass  # never sent (the process is gone, or the call cannot travel): write here
        loop = asyncio.get_running_loop()
        if self._write_lock is not None:
            async with self._write_lock:
                return await loop.run_in_executor(self._writer, self._run_sync, fn, args, durable)
        return await loop.run_in_executor(self._writer, self._run_sync, fn, args, durable)

    def _run_read_sync(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._read_engine is None:
            engine = sa.create_engine(
                sync_url(self.user_url),
                pool_size=READERS,
                max_overflow=0,
                connect_args={"timeout": 30} if self.is_sqlite else {},
            )
            if self.is_sqlite:
                configure_sqlite(engine)
            self._read_engine = engine
        with self._read_engine.connect() as conn, conn.begin():
            return fn(conn, *args)

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` as one read transaction in a reader thread: several
        queries for one thread hop, where ``read()`` pays a hop per statement."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read_sync, fn, args)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            async with conn.begin():
                yield conn

    async def warm(self) -> None:
        """Open every reader thread's connection now, before the server takes traffic: the first
        burst of requests would otherwise open them itself (a thread start, a connect and a schema
        read each) while holding its callers' responses."""
        together = threading.Barrier(READERS)

        def hold(conn: sa.Connection) -> None:
            conn.execute(sa.text("SELECT 1"))
            # Each reader thread keeps its connection until all of them have one, so every
            # thread (not one of them, READERS times) opens its own.
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(timeout=10)

        await asyncio.gather(*(self.run_read(hold) for _ in range(READERS)))

    async def migrate(self) -> None:
        """Bring the schema to the newest alembic revision. A database already there is recognised
        without loading alembic: its modules (~8 MB) would stay in the serving process for good."""
        head = head_revision()
        if head is not None and await self._revision() == head:
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        def upgrade(sync_conn: sa.Connection) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.write() as conn:
            await conn.run_sync(upgrade)

    async def _revision(self) -> str | None:
        try:
            async with self.read() as conn:
                return (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        except sa.exc.DBAPIError:  # no alembic_version table yet: a new database
            return None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await self.engine.dispose()
        if self._sync_engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._sync_engine.dispose)
        self._writer.shutdown(wait=True)
        if self._read_engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._readers, self._read_engine.dispose)
        self._readers.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
