"""Reading the event log in commit order: an id that commits late is never skipped (PostgreSQL),
a rolled-back id does not stall readers, and the SQLite log is settled up to its newest id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agentpost.store import events as event_store
from agentpost.store import orgs


async def _append(db: Any, org: str) -> str:
    async with db.write() as conn:
        return await event_store.append(conn, org, None, "domain.verified", {"domain": {}})


async def _visible(db: Any, org: str, after: int) -> list[str]:
    async with db.read() as conn:
        horizon = await event_store.horizon(conn, after)
        rows = await event_store.matching(conn, after, horizon.position, org, None, None, 100)
    return [r.event_id for r in rows]


async def test_the_log_is_read_in_order_up_to_its_newest_committed_event(db: Any) -> None:
    async with db.write() as conn:
        org = await orgs.default_organization(conn)
    ids = [await _append(db, org) for _ in range(5)]
    assert await _visible(db, org, 0) == ids
    async with db.read() as conn:
        third = await event_store.position_of(conn, ids[2])
    assert third is not None
    assert await _visible(db, org, third) == ids[3:]


@pytest.mark.postgresql
async def test_an_event_committed_after_a_later_id_is_not_skipped_and_a_rollback_does_not_stall(db: Any) -> None:
    async with db.write() as conn:
        org = await orgs.default_organization(conn)
    first = await _append(db, org)
    # A slow writer draws the next id and holds its transaction open (as another node might).
    slow = await db.engine.connect()
    tx = await slow.begin()
    await slow.exec_driver_sql("SELECT 1")
    slow_id = await event_store.append(slow, org, None, "domain.verified", {"domain": {}})
    later = await _append(db, org)
    # The later id has committed, but reading up to it would skip the slow one for good.
    assert await _visible(db, org, 0) == [first]
    async with db.read() as conn:
        assert (await event_store.horizon(conn, 0)).held
    await tx.commit()
    await slow.close()
    assert await _visible(db, org, 0) == [first, slow_id, later]

    # A rolled-back id leaves a hole for good: readers pass it as soon as its transaction ended.
    aborted = await db.engine.connect()
    tx = await aborted.begin()
    await event_store.append(aborted, org, None, "domain.verified", {"domain": {}})
    after_abort = await _append(db, org)
    await tx.rollback()
    await aborted.close()
    started = time.monotonic()
    while after_abort not in await _visible(db, org, 0):
        assert time.monotonic() - started < 1.0, "a rolled-back id stalled the reader"
        await asyncio.sleep(0.01)
