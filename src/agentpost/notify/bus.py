"""Wake-ups after a commit: waiters here and in every process sharing the database learn the log grew."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentpost.notify.wakeups import Link, LogWatch


class EventBus:
    """Tells waiters (webhook fan-out, event feed, WebSockets) that new events were committed.

    It carries no data: consumers always read the committed log, so a missed wake-up costs only
    latency (a periodic look at the log backs it up), never an event. ``published()`` is called
    by whoever committed events; ``connect()`` adds the cross-process link (notify/wakeups.py) so
    commits in other processes wake this one's waiters too.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()
        self._link: Link | None = None
        self._watch: LogWatch | None = None

    def published(self) -> None:
        """Events were committed here: wake local waiters, then the other processes."""
        self.woken()
        if self._link is not None:
            self._link.announce()

    def woken(self) -> None:
        """The log may have grown (a commit here or elsewhere): wake this process's waiters."""
        for waiter in self._waiters:
            waiter.set()

    def subscribe(self) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    async def connect(self, link: Link | None, watch: LogWatch | None = None) -> None:
        self._link = link
        self._watch = watch
        if link is not None:
            await link.start(self.woken)
        if watch is not None:
            watch.start()

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.stop()
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
