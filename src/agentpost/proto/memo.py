"""Caches for pure functions of short texts (parsed records, sanitised header tokens)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


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
