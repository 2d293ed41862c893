"""Submissions hand their queue items, leased at commit, to the worker of their own process."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

from agentpost.net.dns import DnspythonResolver
from agentpost.notify.bus import EventBus
from agentpost.outbound.deliver import DeliverySettings
from agentpost.outbound.worker import OutboundWorker, WorkerSettings
from agentpost.store import queue
from agentpost.store.queue import QueueItem


async def _queued(db: Any, n: int, lease: timedelta | None) -> list[QueueItem]:
    items: list[QueueItem] = []
    for i in range(n):
        rows = queue.rows_for(
            organization_id="org", inbox_id="a@x.test", message_pk=f"m{i}", message_id=f"<m{i}@x.test>",
            thread_id=f"t{i}", blob_id=f"b{i}", mail_from="a@x.test", rcpt_to=[f"p{i}@one.test"], smtputf8=False,
            lifetime=timedelta(days=5), lease=lease,
        )  # fmt: skip
        await db.run_write(queue.enqueue, rows)
        items += [queue.leased_item(r) for r in rows]
    return items


async def _claim(db: Any) -> list[QueueItem]:
    return [item for item, _ in await db.run_write(queue.claim_with_raws, 50, timedelta(minutes=10))]


async def test_items_leased_at_insertion_count_their_attempt_and_no_claim_takes_them(db: Any) -> None:
    await _queued(db, 2, timedelta(minutes=10))
    assert await _claim(db) == []
    (unleased,) = await _queued(db, 1, None)
    (claimed,) = await _claim(db)
    assert claimed.id == unleased.id and claimed.attempts == 1


async def test_a_stopping_worker_gives_back_the_items_it_never_dialled(db: Any) -> None:
    # The only DNS server is a UDP socket nobody reads: the one delivery slot waits on its lookup.
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind(("127.0.0.1", 0))
    resolver = DnspythonResolver([f"127.0.0.1:{black_hole.getsockname()[1]}"], timeout=60, lifetime=60)
    settings = WorkerSettings(DeliverySettings(helo="test.local", timeout=60), concurrency=1, poll_interval=60)
    worker = OutboundWorker(db, EventBus(), resolver, settings, None)
    worker.start()
    try:
        assert worker.lease() == timedelta(seconds=settings.lease)
        items = await _queued(db, 3, worker.lease())
        for item in items:
            worker.take([item], b"Subject: x\r\n\r\nbody\r\n")
        # One in flight and two waiting fill this worker: the next submission is queued unleased.
        assert worker.lease() is None
    finally:
        await worker.stop()
        black_hole.close()
    reclaimed = await _claim(db)
    # The two that waited are due again at once, their counted attempt taken back; the one in
    # flight keeps its lease (it may have reached the receiver) until the lease runs out.
    assert sorted(i.id for i in reclaimed) == sorted(i.id for i in items[1:])
    assert all(i.attempts == 1 for i in reclaimed)
