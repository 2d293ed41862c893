"""The group committer: callers' items share commits, each caller is answered after its group has
committed, and stopping never answers a caller whose group did not commit."""

from __future__ import annotations

import asyncio
from typing import Any

from agentpost.store.group_commit import GroupCommitter


class HeldDatabase:
    """A stand-in for Database.run_write that holds every write until the test releases it, so the
    test sees what was handed over while an earlier group was still committing."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release: list[asyncio.Event] = []
        self.handed = asyncio.Event()

    async def run_write(self, fn: Any, items: list[str], durable: bool = True) -> list[str]:
        self.groups.append(list(items))
        gate = asyncio.Event()
        self.release.append(gate)
        self.handed.set()
        await gate.wait()
        return fn(None, items)


def committed(_conn: Any, items: list[str]) -> list[str]:
    return [f"saved {item}" for item in items]


async def handed_over(db: HeldDatabase, count: int) -> None:
    while len(db.groups) < count:
        db.handed.clear()
        await asyncio.wait_for(db.handed.wait(), 2)


async def test_the_next_group_waits_for_the_commit_and_takes_all_that_arrived() -> None:
    db = HeldDatabase()
    committer: GroupCommitter[str, str] = GroupCommitter(db, committed, 64)  # type: ignore[arg-type]
    committer.start()
    try:
        first = asyncio.create_task(committer.commit(["a"]))
        await handed_over(db, 1)
        rest = [asyncio.create_task(committer.commit([item])) for item in ("b", "c")]
        await asyncio.sleep(0.05)
        assert db.groups == [["a"]]
        db.release[0].set()
        assert await first == ["saved a"]
        await handed_over(db, 2)
        assert db.groups[1] == ["b", "c"]  # one group, one commit
        db.release[1].set()
        assert [await task for task in rest] == [["saved b"], ["saved c"]]
    finally:
        for gate in db.release:
            gate.set()
        await committer.stop()


async def test_stopping_fails_the_callers_whose_groups_did_not_commit() -> None:
    db = HeldDatabase()
    committer: GroupCommitter[str, str] = GroupCommitter(db, committed, 64)  # type: ignore[arg-type]
    committer.start()
    first = asyncio.create_task(committer.commit(["a"]))
    await handed_over(db, 1)
    second = asyncio.create_task(committer.commit(["b"]))  # queued behind the group being written
    await asyncio.sleep(0.05)
    await committer.stop()
    for task in (first, second):
        try:
            await task
        except RuntimeError as exc:
            assert str(exc) == "shutting down"
        else:
            raise AssertionError("a caller whose group never committed was answered")
