"""The outbound worker: claims due queue items, delivers them over pooled sessions, and records every result.

2xx -> message.delivered. 4xx, timeouts, DNS and connection failures -> retried on the schedule,
message.delayed on the first deferral and at configured ages, a Transient bounce once the
lifetime is over. 5xx -> message.bounced (Permanent), the address suppressed, and an RFC 3464
DSN placed in the sender's inbox. The decisions live in ``outcomes``; results are written by a
group committer, so a burst of deliveries costs a few transactions, not one each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from agentpost.model import utcnow
from agentpost.net.dns import Resolver
from agentpost.net.mtasts import PolicyCache, PolicyFetcher, tls_context
from agentpost.notify.bus import EventBus
from agentpost.outbound.connections import ConnectionPool
from agentpost.outbound.deliver import DeliverySettings, MxCache, deliver
from agentpost.outbound.outcomes import Policy, dsn_for, settle_delivery
from agentpost.store import queue
from agentpost.store.db import Database
from agentpost.store.group_commit import GroupCommitter
from agentpost.store.mta_sts import PolicyTable
from agentpost.store.queue import QueueItem, Settlement

log = logging.getLogger(__name__)

LocalDelivery = Callable[[str, list[str], bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    delivery: DeliverySettings
    policy: Policy = field(default_factory=Policy)
    concurrency: int = 50  # deliveries in flight at once
    per_host: int = 20  # sessions open to one receiving host at once
    lease: float = 600.0  # seconds an item stays claimed; a worker that dies leaves it for another after this
    poll_interval: float = 1.0
    # After a wake-up, wait this long so submissions arriving together are claimed together.
    claim_linger: float = 0.005
    reporting_mta: str = "localhost"
    # Source address per sending domain (the inbox's domain); others use delivery.source_address.
    sources: dict[str, str] = field(default_factory=dict)


def mta_sts_policies(db: Database, resolver: Resolver, delivery: DeliverySettings) -> PolicyCache | None:
    """The MTA-STS policy cache (RFC 8461), kept in the database; None when off or relaying through a smarthost."""
    if not delivery.mta_sts or delivery.smarthost is not None:
        return None
    context = tls_context(delivery.mta_sts_ca_file)
    fetcher = PolicyFetcher(resolver, context=context, port=delivery.mta_sts_port, timeout=min(delivery.timeout, 60.0))
    return PolicyCache(resolver, fetcher, store=PolicyTable(db), context=context)


class OutboundWorker:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        resolver: Resolver,
        settings: WorkerSettings,
        deliver_local: LocalDelivery | None,
        commit_results: Callable[[list[Settlement]], Awaitable[object]] | None = None,
    ) -> None:
        """``commit_results``: a group committer this process's sends share (serve); without one
        the worker commits its results through its own."""
        self.db = db
        self.bus = bus
        self.resolver = resolver
        self.settings = settings
        self.deliver_local = deliver_local
        self.pool = ConnectionPool(per_host=settings.per_host)
        self.mx_cache = MxCache()
        self.mta_sts = mta_sts_policies(db, resolver, settings.delivery)
        # Outcomes and claims commit without an fsync (Database.run_write): losing one to a power
        # failure means a repeat delivery attempt, never a lost message, and the fsync per
        # commit was what capped delivery throughput on one SQLite writer.
        self.results: GroupCommitter[Settlement, None] | None = None
        if commit_results is None:
            self.results = GroupCommitter(db, queue.settle, 512, bus.published, name="outbound-results", durable=False)
            commit_results = self.results.commit
        self._commit_results = commit_results
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # queue item ids claimed and not yet settled
        # Woken by submissions and finished deliveries, not by every committed event: received
        # mail must not make the worker contend for the write lock.
        self._wake = asyncio.Event()
        self._submitted = False  # woken by a submission since the last claim
        self._busy = False  # the last claim found work
        # Items leased to this process at submission (``take``) waiting for a delivery slot.
        self._backlog: deque[tuple[QueueItem, bytes]] = deque()
        self._stopping = False

    def wake(self) -> None:
        """A submission queued remote recipients: there is work due now."""
        self._submitted = True
        self._wake.set()

    def lease(self) -> timedelta | None:
        """A submission may queue its items leased to this process while the items waiting here
        are fewer than the delivery slots: more would wait longer in memory than a claim would
        take, and another process may have room for them."""
        if self._stopping or len(self._backlog) >= self.settings.concurrency:
            return None
        return timedelta(seconds=self.settings.lease)

    def take(self, items: list[QueueItem], raw: bytes) -> None:
        """Deliver items the submission committed leased to this process, from memory: no claim
        transaction, no read of the raw message back. The lease is renewed while they wait."""
        for item in items:
            self._held.add(item.id)
            if len(self._inflight) < self.settings.concurrency and not self._backlog:
                self._launch(item, raw)
            else:
                self._backlog.append((item, raw))

    def _launch(self, item: QueueItem, raw: bytes | None) -> None:
        task = asyncio.create_task(self._process(item, raw))
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def start(self) -> None:
        if self.results is not None:
            self.results.start()
        self._task = asyncio.create_task(self._run(), name="outbound-worker")
        self._renewer = asyncio.create_task(self._renew(), name="outbound-lease-renewal")

    async def stop(self) -> None:
        self._stopping = True
        for background in (self._task, self._renewer):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        waiting = [item.id for item, _ in self._backlog]
        self._backlog.clear()
        if waiting:  # never dialled: due again for any worker now, not when the lease runs out
            try:
                await self.db.run_write(queue.release_unattempted, waiting)
            except Exception:
                log.exception("could not release %d leased queue items; they are due when the lease ends", len(waiting))
        if self.results is not None:
            await self.results.stop()
        await self.pool.close()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbound worker step failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass

    async def step(self) -> None:
        """Claim what is due, up to the free delivery slots, and start delivering it."""
        if self.settings.concurrency - len(self._inflight) <= 0 or self._backlog:
            return
        submitted, self._submitted = self._submitted, False
        if not submitted and not self._busy:
            # Woken by the clock or a finished delivery after a claim that found nothing: look
            # before taking the write lock, so an idle queue costs no write transaction. After a
            # submission, or while claims keep finding work, something is due.
            due = await self.db.run_read(queue.next_due_sync)
            if due is None or due > utcnow():
                return
        if self.settings.claim_linger:
            await asyncio.sleep(self.settings.claim_linger)
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0 or self._backlog:  # submissions handed items over while we lingered
            return
        claimed = await self.db.run_write(
            queue.claim_with_raws, free, timedelta(seconds=self.settings.lease), durable=False
        )
        self._busy = bool(claimed)
        for item, raw in claimed:
            self._held.add(item.id)
            self._launch(item, raw)

    async def _renew(self) -> None:
        """Keep the leases of items still in flight (waiting for a session to a busy host, or a
        slow transaction): another node must take an item only when this process is gone."""
        lease = timedelta(seconds=self.settings.lease)
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            held = list(self._held)
            if not held:
                continue
            try:
                async with self.db.write() as conn:
                    await queue.renew_leases(conn, held, lease)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not renew the leases of %d queue items", len(held))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._backlog and not self._stopping:
            self._launch(*self._backlog.popleft())  # leased here already: before claiming more
        elif self._submitted or self._busy:
            # A slot is free and claims have found work (or a submission queued some unleased):
            # more may be due. Otherwise retries and other processes' items wait for the poll,
            # rather than every finished delivery costing a look at the queue.
            self._wake.set()

    async def _process(self, item: QueueItem, raw: bytes | None) -> None:
        try:
            await self._attempt(item, raw)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease expires and the item is tried again; nothing is lost.
            log.exception("delivery of queue item %s failed", item.id)
        finally:
            self._held.discard(item.id)

    async def _attempt(self, item: QueueItem, raw: bytes | None) -> None:
        if raw is None:
            gone = Settlement(item_id=item.id, status="bounced", last_error="message deleted before delivery")
            await self._commit_results([gone])
            return
        result = await deliver(
            self.resolver,
            self.settings.delivery,
            item.rcpt_domain,
            item.mail_from,
            item.rcpt_to,
            raw,
            item.smtputf8,
            self.pool,
            self.mx_cache,
            self.settings.sources.get(item.inbox_id.rpartition("@")[2].lower()),
            self.mta_sts,
        )
        settlement, refusals = settle_delivery(item, result, self.settings.policy, utcnow())
        await self._commit_results([settlement])
        if refusals and self.deliver_local is not None:
            try:
                dsn = dsn_for(
                    item.message_id, item.inbox_id, item.created_at, raw, refusals, self.settings.reporting_mta
                )
                await self.deliver_local("", [item.inbox_id], dsn)
            except Exception:
                log.exception("could not place the DSN for %s in %s", item.message_id, item.inbox_id)
