"""Outbound queue claims on SQLite and PostgreSQL: leases, attempt counting, the first retry step."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from agentpost.outbound.outcomes import backoff
from agentpost.store import queue
from agentpost.store.queue import QueueItem


async def _claim(db: Any, lease: timedelta) -> list[QueueItem]:
    return [item for item, _ in await db.run_write(queue.claim_with_raws, 10, lease)]


async def test_a_claim_counts_the_attempt_and_leases_the_item_so_no_one_else_claims_it(db: Any) -> None:
    rows = queue.rows_for(
        organization_id="org", inbox_id="a@x.test", message_pk="m1", message_id="<m1@x.test>", thread_id="t1",
        blob_id="b1", mail_from="a@x.test", rcpt_to=["p@one.test", "q@one.test", "r@two.test"], smtputf8=False,
        lifetime=timedelta(days=5),
    )  # fmt: skip
    assert sorted(len(r["rcpt_to"]) for r in rows) == [1, 2]  # one item per recipient domain
    await db.run_write(queue.enqueue, rows)
    first = await _claim(db, timedelta(minutes=10))
    second = await _claim(db, timedelta(minutes=10))
    assert len(first) == 2 and second == []
    assert all(item.attempts == 1 for item in first)


def test_retries_follow_the_schedule_with_jitter_and_repeat_its_last_step() -> None:
    schedule = (60.0, 300.0, 28800.0)
    assert 54.0 <= backoff(schedule, 1) <= 66.0
    assert 270.0 <= backoff(schedule, 2) <= 330.0
    assert 25920.0 <= backoff(schedule, 9) <= 31680.0


async def test_a_renewed_lease_keeps_an_item_in_flight_from_being_claimed_again(db: Any) -> None:
    rows = queue.rows_for(
        organization_id="org", inbox_id="a@x.test", message_pk="m2", message_id="<m2@x.test>", thread_id="t2",
        blob_id="b2", mail_from="a@x.test", rcpt_to=["p@one.test"], smtputf8=False, lifetime=timedelta(days=5),
    )  # fmt: skip
    await db.run_write(queue.enqueue, rows)
    (item,) = await _claim(db, timedelta(seconds=0.5))
    async with db.write() as conn:
        await queue.renew_leases(conn, [item.id], timedelta(seconds=30))
    await asyncio.sleep(0.7)  # the first lease has run out; the renewed one has not
    assert await _claim(db, timedelta(seconds=30)) == []
