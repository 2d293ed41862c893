"""The outbound worker: claims due queue items, delivers them, and records every result.

2xx -> message.delivered. 4xx, timeouts, DNS and connection failures -> retried on the schedule,
message.delayed on the first deferral, a Transient bounce once the lifetime is over. 5xx ->
message.bounced (Permanent), the address suppressed, and an RFC 3464 DSN placed in the sender's
inbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from agentpost.model import new_id, utcnow
from agentpost.net.dns import Resolver
from agentpost.net.smtpclient import SmtpReply
from agentpost.notify.bus import EventBus
from agentpost.outbound.deliver import DeliverySettings, deliver
from agentpost.proto.dsn import BouncedRecipient, build_dsn, classify
from agentpost.store import events as event_store
from agentpost.store import messages as message_store
from agentpost.store import queue
from agentpost.store import suppressions as suppression_store
from agentpost.store.db import Database
from agentpost.store.queue import QueueItem

log = logging.getLogger(__name__)

LocalDelivery = Callable[[str, list[str], bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    delivery: DeliverySettings
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
    concurrency: int = 10
    lease: float = 600.0
    poll_interval: float = 1.0
    reporting_mta: str = "localhost"


class OutboundWorker:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        resolver: Resolver,
        settings: WorkerSettings,
        deliver_local: LocalDelivery | None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.resolver = resolver
        self.settings = settings
        self.deliver_local = deliver_local
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # Woken by submissions only, not by every committed event: received mail must not make
        # the worker contend for the write lock.
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbound-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

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
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return
        async with self.db.read() as conn:
            due = await queue.next_due(conn)
        if due is None or due > utcnow():
            return  # nothing due: no write transaction at all
        async with self.db.write() as conn:
            items = await queue.claim_due(conn, free, timedelta(seconds=self.settings.lease))
        for item in items:
            task = asyncio.create_task(self._process(item))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def backoff(self, attempts: int) -> float:
        schedule = self.settings.retry_schedule
        return schedule[min(attempts - 1, len(schedule) - 1)] * random.uniform(0.9, 1.1)

    async def _process(self, item: QueueItem) -> None:
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease expires and the item is tried again; nothing is lost.
            log.exception("delivery of queue item %s failed", item.id)

    async def _attempt(self, item: QueueItem) -> None:
        async with self.db.read() as conn:
            raw = await message_store.raw(conn, item.blob_id)
        if raw is None:
            async with self.db.write() as conn:
                await queue.retire(conn, item.id, "bounced", "message deleted before delivery")
            return
        result = await deliver(
            self.resolver, self.settings.delivery, item.rcpt_domain, item.mail_from, item.rcpt_to, raw, item.smtputf8
        )
        answered = result.sessions[-1] if result.sessions else None
        delivered = [r for r, reply in result.replies.items() if 200 <= reply.code < 300]
        bounced = {r: reply for r, reply in result.replies.items() if reply.code >= 500}
        deferred = {r: reply for r, reply in result.replies.items() if 400 <= reply.code < 500}
        expired = bool(deferred) and utcnow() >= item.expires_at
        if expired:
            bounced.update(deferred)  # lifetime over: a Transient bounce (RFC 3464 Action: failed)
            deferred = {}
        attempts = [
            {
                "queue_id": item.id,
                "message_pk": item.message_pk,
                "rcpt": rcpt,
                "outcome": "delivered" if rcpt in delivered else ("bounced" if rcpt in bounced else "deferred"),
                "remote_host": answered.host if answered else None,
                "remote_ip": answered.ip if answered else None,
                "code": reply.code,
                "enhanced": reply.enhanced,
                "reply": reply.text[:2000],
                "tls_version": answered.tls_version if answered else None,
                "tls_verified": answered.tls_verified if answered else None,
                "duration_ms": int(answered.duration * 1000) if answered else None,
            }
            for rcpt, reply in result.replies.items()
        ]
        now = utcnow()
        base = {
            "inbox_id": item.inbox_id,
            "thread_id": item.thread_id,
            "message_id": item.message_id,
            "timestamp": now.isoformat(),
        }
        async with self.db.write() as conn:
            await queue.record_attempts(conn, attempts)
            if delivered:
                await event_store.append(
                    conn, item.organization_id, item.inbox_id, "message.delivered",
                    {"delivery": {**base, "recipients": delivered}},
                )  # fmt: skip
            if bounced:
                first = next(iter(bounced.values()))
                bounce_type, sub_type = classify(first.enhanced, first.text, first.code)
                if expired:
                    bounce_type = "Transient"
                await event_store.append(
                    conn, item.organization_id, item.inbox_id, "message.bounced",
                    {"bounce": {**base, "type": bounce_type, "sub_type": sub_type,
                                "recipients": [{"address": r, "status": _status(rep)} for r, rep in bounced.items()]}},
                )  # fmt: skip
                for rcpt, reply in bounced.items():
                    if classify(reply.enhanced, reply.text, reply.code)[0] == "Permanent" and not expired:
                        # Hard bounces are suppressed for the sending inbox (RFC 5321 §4.2.1: 5yz).
                        await suppression_store.add(
                            conn, item.organization_id, item.inbox_id, rcpt, "bounced", str(reply)
                        )
            if deferred:
                if not item.delayed_notified:
                    first = next(iter(deferred.values()))
                    await event_store.append(
                        conn, item.organization_id, item.inbox_id, "message.delayed",
                        {"delay": {**base, "recipients": list(deferred), "reply": str(first)}},
                    )  # fmt: skip
                await queue.defer(
                    conn,
                    item.id,
                    list(deferred),
                    now + timedelta(seconds=self.backoff(item.attempts)),
                    str(next(iter(deferred.values()))),
                    notified=True,
                )
            else:
                await queue.retire(conn, item.id, "bounced" if bounced else "delivered")
        self.bus.published()
        if bounced and self.deliver_local is not None:
            await self._dsn(item, raw, bounced, answered.host if answered else None)

    async def _dsn(self, item: QueueItem, raw: bytes, bounced: dict[str, SmtpReply], remote: str | None) -> None:
        """An RFC 3464 report into the sender's own inbox (never to a remote address: no backscatter)."""
        header_end = raw.find(b"\r\n\r\n")
        headers = raw[: header_end + 2] if header_end >= 0 else raw[:8192]
        recipients = [
            BouncedRecipient(r, _status(reply), "failed", f"smtp; {reply}", remote) for r, reply in bounced.items()
        ]
        domain = item.inbox_id.rpartition("@")[2]
        dsn = build_dsn(
            reporting_mta=self.settings.reporting_mta,
            original_message_id=item.message_id,
            original_headers=headers,
            recipients=recipients,
            arrival_date=item.created_at,
            from_address=f"mailer-daemon@{domain}",
            to_address=item.inbox_id,
            message_id=f"<{new_id('dsn_')}@{domain}>",
            human_text="Your message could not be delivered to: " + ", ".join(bounced) + ".",
        )
        if self.deliver_local is None:
            return
        try:
            await self.deliver_local("", [item.inbox_id], dsn)
        except Exception:
            log.exception("could not place the DSN for %s in %s", item.message_id, item.inbox_id)


def _status(reply: SmtpReply) -> str:
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"
