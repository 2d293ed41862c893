"""Cross-process wake-ups: every process sharing a database learns at once that the log grew.

Several processes commit events (the MX worker processes of one `serve`, other `serve` nodes),
and a WebSocket or long-poll may be open on any of them. A wake-up carries no data: a woken
process reads the committed log, so a lost one costs latency, never an event (``LogWatch``
looks at the log once a second as a backstop).

- SQLite (one host): each process binds a UNIX datagram socket in a directory next to the
  database file; announcing is one ``sendto`` per peer, without touching the database.
- PostgreSQL (many hosts): LISTEN/NOTIFY on a dedicated connection (store/notices.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agentpost.store import events as event_store
from agentpost.store.db import Database
from agentpost.store.notices import PgNotices

log = logging.getLogger(__name__)


class Link(Protocol):
    async def start(self, on_wake: Callable[[], None]) -> None: ...

    def announce(self) -> None: ...

    async def stop(self) -> None: ...


class SocketLink:
    """UNIX datagram sockets in one directory, one per process: announce = a byte to each peer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}.{secrets.token_hex(4)}.sock"
        self._sock: socket.socket | None = None
        self._on_wake: Callable[[], None] = lambda: None

    async def start(self, on_wake: Callable[[], None]) -> None:
        self._on_wake = on_wake
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(self.path))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock.recv(64):
                pass
        self._on_wake()

    def announce(self) -> None:
        if self._sock is None:
            return
        try:
            peers = [entry.path for entry in os.scandir(self.directory) if entry.name.endswith(".sock")]
        except FileNotFoundError:
            return
        for peer in peers:
            if peer == str(self.path):
                continue
            try:
                self._sock.sendto(b"!", peer)
            except (BlockingIOError, InterruptedError):
                pass  # its queue is full: it has wake-ups pending already
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody reads it: a process that died without cleaning up.
                with contextlib.suppress(OSError):
                    os.unlink(peer)
            except OSError as exc:
                log.debug("wake-up to %s failed: %s", peer, exc)

    async def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            self.path.unlink()


def link_for(db: Database) -> Link | None:
    """The cross-process link for this database, or None (an in-memory SQLite has no peers)."""
    if not db.is_sqlite:
        return PgNotices(db.user_url)
    path = db.url.split(":///", 1)[1] if ":///" in db.url else ""
    if not path or path == ":memory:":
        return None
    # Next to the database file: every process that shares the database finds the same directory.
    return SocketLink(Path(path + ".wake"))


class LogWatch:
    """Looks at the newest event id every ``interval`` seconds and wakes waiters when it moved.

    The backstop for wake-ups that never came (a peer crashed between its commit and its
    announcement, a dropped LISTEN connection, a writer with no link such as the CLI). One query
    per process, however many subscribers wait.
    """

    def __init__(self, db: Database, on_wake: Callable[[], None], interval: float = 1.0) -> None:
        self.db = db
        self.on_wake = on_wake
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-log-watch")

    async def _run(self) -> None:
        seen = -1
        while True:
            try:
                async with self.db.read() as conn:
                    newest = await event_store.last_position(conn)
                if newest != seen:
                    seen = newest
                    self.on_wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event log watch failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
