"""Webhook delivery worker: fans committed events out to subscriptions and POSTs them, signed.

Signatures follow Standard Webhooks (the Svix scheme): ``webhook-id`` is the event id (stable
across retries, so receivers can de-duplicate), ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; the ``svix-*`` names are
sent too for receivers built on the Svix libraries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from standardwebhooks.webhooks import Webhook as Signer

from agentpost.config import WebhookConfig
from agentpost.model import utcnow
from agentpost.notify.bus import EventBus
from agentpost.store import events as event_store
from agentpost.store import webhooks as webhook_store
from agentpost.store.db import Database
from agentpost.store.webhooks import Claimed

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


def sign_headers(secret: str, event_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    from datetime import UTC, datetime

    signature = Signer(secret).sign(event_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    headers.update({"svix-" + k.split("-", 1)[1]: v for k, v in list(headers.items())})
    return headers


def _is_due(when: datetime | None) -> bool:
    return when is not None and when <= utcnow()


class WebhookWorker:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        config: WebhookConfig,
        unseal: Callable[[str], str],
        transport: httpx.AsyncBaseTransport | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.config = config
        self.unseal = unseal
        self.poll_interval = poll_interval
        import httpx  # here: MX worker processes, which run no webhook worker, never load it

        self.client = httpx.AsyncClient(
            timeout=config.timeout,
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": "agentpost-webhooks/0.1"},
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self.coalesce = 0.02
        self._has_hooks = False
        self._hooks_checked_at = -1e9
        # Whether a pending delivery may be due; refreshed every poll so retries and other nodes'
        # rows are picked up.
        self._due_hint = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.client.aclose()

    async def _run(self) -> None:
        wake = self.bus.subscribe()
        try:
            while True:
                wake.clear()
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook worker step failed; retrying")
                try:
                    await asyncio.wait_for(wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
                # Under load commits arrive hundreds of times a second: gather them into one pass
                # rather than contending for the write lock after each.
                await asyncio.sleep(self.coalesce)
        finally:
            self.bus.unsubscribe(wake)

    async def step(self) -> None:
        """One pass: fan out new events, then start every due delivery."""
        now = time.monotonic()
        if now >= self._hooks_checked_at + self.poll_interval:
            async with self.db.read() as conn:
                self._has_hooks = await webhook_store.any_enabled(conn)
                self._due_hint = self._due_hint or _is_due(await webhook_store.next_due(conn))
            self._hooks_checked_at = now
        if self._has_hooks:
            # Without subscriptions there is nothing to fan out; the cursor stays where it is and
            # a webhook created later picks up from there (it only receives events newer than itself).
            async with self.db.write() as conn:
                if await webhook_store.fan_out(conn):
                    self._due_hint = True
        free = max(0, self.config.concurrency - len(self._inflight))
        if free == 0 or not self._due_hint:
            return
        lease = timedelta(seconds=self.config.timeout * 3 + 30)
        async with self.db.write() as conn:
            claimed = await webhook_store.claim_due(conn, free, lease)
            self._due_hint = len(claimed) == free or _is_due(await webhook_store.next_due(conn))
        for item in claimed:
            task = asyncio.create_task(self._deliver(item))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def backoff(self, attempts: int) -> float:
        schedule = self.config.retry_schedule or [60.0]
        base = schedule[min(attempts - 1, len(schedule) - 1)]
        return float(base) * random.uniform(0.8, 1.2)  # jitter spreads retries after an outage

    async def _deliver(self, item: Claimed) -> None:
        async with self._slots:
            async with self.db.read() as conn:
                envelope = await event_store.render(conn, item.event)
            attempts = item.attempts + 1
            if envelope is None:
                # Not the receiver's fault: it does not count towards disabling the webhook.
                await self._record(item, "failed", attempts, None, "event subject no longer exists", counts=False)
                return
            body = json.dumps(envelope, separators=(",", ":")).encode()
            status_code: int | None = None
            error: str | None = None
            try:
                secret = self.unseal(item.webhook.secret_enc)
                headers = {"content-type": "application/json"}
                if item.webhook.headers_enc:
                    headers.update(json.loads(self.unseal(item.webhook.headers_enc)))
                headers.update(sign_headers(secret, item.event.event_id, body, int(utcnow().timestamp())))
                response = await self.client.post(item.webhook.url, content=body, headers=headers)
                status_code = response.status_code
                if 200 <= status_code < 300:
                    await self._record(item, "delivered", attempts, status_code, None)
                    return
                error = f"HTTP {status_code}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network errors, bad URLs: retried like a 5xx
                error = f"{type(exc).__name__}: {exc}"[:500]
            expired = utcnow() - item.created_at > timedelta(seconds=self.config.max_age)
            log.info("webhook %s event %s attempt %d failed: %s", item.webhook.id, item.event.event_id, attempts, error)
            await self._record(item, "failed" if expired else "pending", attempts, status_code, error)

    async def _record(
        self,
        item: Claimed,
        status: str,
        attempts: int,
        http_status: int | None,
        error: str | None,
        counts: bool = True,
    ) -> None:
        delay = self.backoff(attempts) if status == "pending" else 0.0
        disabled: str | None = None
        async with self.db.write() as conn:
            await webhook_store.record_attempt(
                conn,
                item.delivery_id,
                status=status,
                attempts=attempts,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                http_status=http_status,
                error=error,
            )
            if status == "delivered":
                await webhook_store.record_success(conn, item.webhook.id)
            elif counts:
                disabled = await webhook_store.record_failure(conn, item.webhook.id, self.config.disable_after_failures)
        if disabled is not None:
            log.warning(
                "webhook %s disabled after %d consecutive failed deliveries (event %s)",
                item.webhook.id,
                self.config.disable_after_failures,
                disabled,
            )
            self.bus.published()  # the webhook.disabled event is in the log: wake its readers
