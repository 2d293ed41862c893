"""Open SMTP sessions kept for reuse, per destination host, with a cap on sessions per host.

RFC 5321 §3.3 lets one session carry any number of transactions; reusing it saves the TCP and
TLS handshakes and the EHLO for every message after the first to the same host (Postfix's
connection cache does the same). A per-host cap keeps us polite to one receiver (Postfix's
default_destination_concurrency_limit is 20).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from agentpost.net.smtpclient import SmtpSession

# (MX host name, IP, port, our source address, the TLS policy the session was opened under: "" or an MTA-STS mode)
Key = tuple[str, str, int, str | None, str]


class ConnectionPool:
    def __init__(
        self,
        *,
        per_host: int = 20,
        idle_timeout: float = 10.0,
        max_age: float = 300.0,
        max_messages: int = 1000,
    ) -> None:
        self.per_host = max(1, per_host)
        self.idle_timeout = idle_timeout
        self.max_age = max_age  # a long-lived session is closed now and then: the MX may have changed
        self.max_messages = max_messages
        # session, when opened, messages sent, when it became idle
        self._idle: dict[Key, list[tuple[SmtpSession, float, int, float]]] = {}
        self._limits: dict[Key, asyncio.Semaphore] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def session(
        self, key: Key, factory: Callable[[], SmtpSession], *, fresh: bool = False
    ) -> AsyncIterator[SmtpSession]:
        """An idle session to ``key`` when there is one (unless ``fresh``), else a new one from ``factory``.

        Given back for reuse when the caller finishes without error and it is still connected.
        """
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = asyncio.Semaphore(self.per_host)
        async with limit:
            session, opened, sent = (None, 0.0, 0) if fresh else self._take(key)
            if session is None:
                session, opened, sent = factory(), time.monotonic(), 0
            reusable = False
            try:
                yield session
                reusable = True
            finally:
                sent += 1
                if (
                    reusable
                    and session.connected
                    and session.error is None
                    and sent < self.max_messages
                    and time.monotonic() - opened < self.max_age
                ):
                    self._idle.setdefault(key, []).append((session, opened, sent, time.monotonic()))
                    self._ensure_reaper()
                else:
                    self._close_later(session)

    def _take(self, key: Key) -> tuple[SmtpSession | None, float, int]:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            session, opened, sent, since = idle.pop()
            if session.connected and now - since < self.idle_timeout:
                return session, opened, sent
            self._close_later(session)
        return None, 0.0, 0

    def _close_later(self, session: SmtpSession) -> None:
        task = asyncio.create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="smtp-connection-reaper")

    async def _reap(self) -> None:
        # Idle sessions are closed (QUIT) after idle_timeout: receivers time idle clients out anyway
        # (RFC 5321 §4.5.3.2.7 allows 5 minutes), and an open socket costs them a slot.
        while any(self._idle.values()):
            await asyncio.sleep(max(self.idle_timeout / 2, 0.5))
            now = time.monotonic()
            for key, idle in list(self._idle.items()):
                keep = []
                for entry in idle:
                    if entry[0].connected and now - entry[3] < self.idle_timeout:
                        keep.append(entry)
                    else:
                        self._close_later(entry[0])
                self._idle[key] = keep

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for idle in self._idle.values():
            for session, *_ in idle:
                self._close_later(session)
        self._idle.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
