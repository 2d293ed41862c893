"""Caches for pure functions of short texts (parsed records, sanitised header tokens), and
shared calls: one run of a slow call per key at a time (lookups many tasks ask for together)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def short_text_cache(limit: int, maxsize: int = 4096) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Cache a function of one text for texts of at most ``limit`` characters (``maxsize`` of them,
    least recently used dropped first); longer texts are computed each time, so what senders
    publish or write cannot make the cache large. Only for functions whose result is immutable."""

    def wrap(fn: Callable[[str], T]) -> Callable[[str], T]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(text: str) -> T:
            return cached(text) if len(text) <= limit else fn(text)

        return call

    return wrap


class SharedCalls(Generic[K, T]):
    """One call per key at a time: who asks while it runs awaits the same result (or error)
    instead of starting another. Nothing is kept once it ends: callers cache what they want."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def call(self, key: K, start: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(start())
            running.add_done_callback(lambda _: self._running.pop(key, None))
        # Shielded: one caller giving up (a cancelled session or request) does not cancel the
        # call the others wait for.
        return await asyncio.shield(running)
