"""PostgreSQL LISTEN/NOTIFY between processes sharing one database: wake-ups only, never data."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "agentpost_events"
RECONNECT_DELAY = 1.0


def asyncpg_dsn(url: str) -> str:
    """asyncpg wants a plain libpq URL: drop SQLAlchemy's ``+driver`` suffix."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    return ("postgresql" if base in ("postgres", "postgresql") else base) + sep + rest


class PgNotices:
    """One dedicated connection per process: LISTENs on CHANNEL and sends NOTIFY for this process.

    A notification is sent after the commit it announces (the caller calls ``announce()`` then),
    so a listener that reads the log on wake-up sees the new rows. Announcements made while one
    NOTIFY is in flight are folded into one more: a wake-up carries no data, so one says it all.
    """

    def __init__(self, url: str) -> None:
        self.dsn = asyncpg_dsn(url)
        # Our own notifications come back to us: the payload names the sender so they are ignored.
        self.token = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._conn: Any = None
        self._on_wake: Callable[[], None] = lambda: None
        self._pending = False
        self._sender: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, on_wake: Callable[[], None]) -> None:
        self._on_wake = on_wake
        self._keeper = asyncio.create_task(self._keep_connected(), name="pg-notices")
        # Wait a little for the first connection so the first commits are announced; the keeper
        # goes on trying if the database is not reachable yet.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.token:
            self._on_wake()

    async def _keep_connected(self) -> None:
        # Imported here: on SQLite (the default) nothing loads the driver (~3 MB per process).
        import asyncpg  # type: ignore[import-untyped]

        while True:
            try:
                conn = await asyncpg.connect(self.dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await conn.add_listener(CHANNEL, self._notified)
                self._conn = conn
                self._connected.set()
                # Anything committed while we were not listening: let waiters look.
                self._on_wake()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed (%s); retrying", exc)
            finally:
                self._conn = None
                self._connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(RECONNECT_DELAY)

    def announce(self) -> None:
        self._pending = True
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="pg-notify")

    async def _send(self) -> None:
        import asyncpg

        while self._pending:
            self._pending = False
            conn = self._conn
            if conn is None:
                return  # not listening either; the others' periodic look finds the rows
            try:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.token)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("NOTIFY failed: %s", exc)
                return

    async def stop(self) -> None:
        for task in (self._sender, self._keeper):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
