"""In-process wake-ups after a commit: waiters learn that the event log has grown."""

from __future__ import annotations

import asyncio


class EventBus:
    """Tells waiters (webhook fan-out, live feeds) that new events were committed.

    It carries no data: consumers always read the committed log, so a missed wake-up costs only
    latency (they also poll), never an event.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def published(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def subscribe(self) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)
