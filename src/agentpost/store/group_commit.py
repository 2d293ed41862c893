"""Group commit: many callers' writes in one transaction (and one fsync), each caller answered after it commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa

from agentpost.store.db import Database

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

# Writes a group in the caller's one transaction (writer thread); one result per payload, in order.
GroupWrite = Callable[[sa.Connection, list[P]], list[R]]


@dataclass(slots=True)
class _Pending(Generic[P, R]):
    items: list[P]
    future: asyncio.Future[list[R]]


class GroupCommitter(Generic[P, R]):
    """Commits payloads in groups: one transaction (and one fsync) per group.

    While one group is being written, new arrivals queue up and form the next group, so under
    load the per-item cost of a durable commit shrinks; with one item at a time it is a plain
    commit. Every caller's future resolves only after its group has committed.
    """

    def __init__(
        self,
        db: Database,
        write: GroupWrite[P, R],
        max_batch: int,
        on_commit: Callable[[], None] = lambda: None,
        linger: float = 0.0,
        name: str = "group-committer",
        durable: bool | Callable[[list[P]], bool] = True,
    ) -> None:
        self.db = db
        self.write = write
        self.max_batch = max(1, max_batch)
        self.on_commit = on_commit
        self.linger = max(0.0, linger)
        self.name = name
        # Database.run_write's: False only for writes nobody was promised; a function decides per group.
        self.durable = durable
        self._queue: asyncio.Queue[_Pending[P, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("shutting down"))

    async def commit(self, items: list[P]) -> list[R]:
        if self._task is None:
            result = await self.db.run_write(self.write, items, durable=self._durable(items))
            self.on_commit()
            return result
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future))
        return await future

    def _durable(self, items: list[P]) -> bool:
        return self.durable(items) if callable(self.durable) else self.durable

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            if self.linger and self._queue.qsize() < self.max_batch:
                # Let the group fill a little: every commit has a fixed cost (statements, GIL
                # hand-offs to the writer thread, fsync), so fewer, larger groups win under load.
                await asyncio.sleep(self.linger)
            size = len(group[0].items)
            while size < self.max_batch and not self._queue.empty():
                pending = self._queue.get_nowait()
                group.append(pending)
                size += len(pending.items)
            await self._write(group)

    async def _write(self, group: list[_Pending[P, R]]) -> None:
        items = [i for p in group for i in p.items]
        try:
            results = await self.db.run_write(self.write, items, durable=self._durable(items))
        except asyncio.CancelledError:
            for p in group:
                if not p.future.done():
                    p.future.set_exception(RuntimeError("shutting down"))
            raise
        except Exception as exc:
            if len(group) == 1:
                log.exception("%s: commit failed", self.name)
                if not group[0].future.done():
                    group[0].future.set_exception(RuntimeError(f"commit failed: {type(exc).__name__}"))
                return
            # One bad item must not fail its neighbours: retry each on its own.
            for p in group:
                await self._write([p])
            return
        offset = 0
        for p in group:
            n = len(p.items)
            if not p.future.done():
                p.future.set_result(results[offset : offset + n])
            offset += n
        self.on_commit()
