"""Outbound queue rows: enqueue, claim with a lease, record attempts, retire. The only code that changes queue state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store import leases
from agentpost.store import messages as message_store
from agentpost.store.messages import NewMessage
from agentpost.store.tables import delivery_attempts, outbound_queue


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: str
    organization_id: str
    inbox_id: str
    message_pk: str
    message_id: str
    thread_id: str
    blob_id: str
    mail_from: str
    rcpt_domain: str
    rcpt_to: list[str]
    smtputf8: bool
    attempts: int
    delayed_notified: bool
    expires_at: datetime
    created_at: datetime


def rows_for(
    *,
    organization_id: str,
    inbox_id: str,
    message_pk: str,
    message_id: str,
    thread_id: str,
    blob_id: str,
    mail_from: str,
    rcpt_to: list[str],
    smtputf8: bool,
    lifetime: timedelta,
) -> list[dict[str, Any]]:
    """One row per recipient domain (recipients of one domain share one SMTP transaction)."""
    by_domain: dict[str, list[str]] = {}
    for rcpt in rcpt_to:
        by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
    now = utcnow()
    return [
        {
            "id": new_id("q_"),
            "organization_id": organization_id,
            "inbox_id": inbox_id,
            "message_pk": message_pk,
            "message_id": message_id,
            "thread_id": thread_id,
            "blob_id": blob_id,
            "mail_from": mail_from,
            "rcpt_domain": domain,
            "rcpt_to": rcpts,
            "smtputf8": smtputf8,
            "status": "queued",
            "attempts": 0,
            "next_attempt_at": now,
            "lease_until": None,
            "delayed_notified": False,
            "expires_at": now + lifetime,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
        }
        for domain, rcpts in by_domain.items()
    ]


def enqueue(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert queue rows in the caller's (synchronous, writer-thread) transaction."""
    if rows:
        conn.execute(outbound_queue.insert(), rows)


def save_sent(conn: sa.Connection, item: NewMessage, remote: list[str], smtputf8: bool, lifetime: timedelta) -> str:
    """The sent copy (message, thread, message.sent event) and its queue items, in the caller's
    one transaction (writer thread). Returns the thread id."""
    thread_id = message_store.save_batch(conn, [item])[0].thread_id
    enqueue(
        conn,
        rows_for(
            organization_id=item.organization_id,
            inbox_id=item.inbox_id,
            message_pk=item.pk,
            message_id=item.message_id,
            thread_id=thread_id,
            blob_id=item.raw_key,
            mail_from=item.mail_from,
            rcpt_to=remote,
            smtputf8=smtputf8,
            lifetime=lifetime,
        ),
    )
    return thread_id


def _item(r: Any, attempts: int) -> QueueItem:
    return QueueItem(
        r.id, r.organization_id, r.inbox_id, r.message_pk, r.message_id, r.thread_id, r.blob_id, r.mail_from,
        r.rcpt_domain, list(r.rcpt_to), bool(r.smtputf8), attempts, bool(r.delayed_notified), r.expires_at,
        r.created_at,
    )  # fmt: skip


async def claim_due(conn: AsyncConnection, limit: int, lease: timedelta) -> list[QueueItem]:
    """Due items, leased to this worker; on PostgreSQL rows locked by another worker are skipped.

    The attempt is recorded (lease taken, attempts counted) before dialling.
    """
    rows = await leases.claim(
        conn,
        outbound_queue,
        outbound_queue.c.status == "queued",
        limit,
        lease,
        attempts=outbound_queue.c.attempts + 1,
        updated_at=utcnow(),
    )
    # Rows were read before the update: count this attempt in what the worker sees.
    return [_item(r, attempts=r.attempts + 1) for r in rows]


async def record_attempts(conn: AsyncConnection, attempts: list[dict[str, Any]]) -> None:
    if attempts:
        now = utcnow()
        await conn.execute(
            delivery_attempts.insert(), [{"id": new_id("att_"), "created_at": now, **a} for a in attempts]
        )


async def retire(conn: AsyncConnection, item_id: str, status: str, last_error: str | None = None) -> None:
    await conn.execute(
        outbound_queue.update()
        .where(outbound_queue.c.id == item_id)
        .values(status=status, lease_until=None, last_error=last_error, updated_at=utcnow())
    )


async def defer(
    conn: AsyncConnection, item_id: str, rcpt_to: list[str], next_attempt_at: datetime, error: str, notified: bool
) -> None:
    """Keep the item for the recipients still pending, to be retried at ``next_attempt_at``."""
    await conn.execute(
        outbound_queue.update()
        .where(outbound_queue.c.id == item_id)
        .values(
            rcpt_to=rcpt_to,
            next_attempt_at=next_attempt_at,
            lease_until=None,
            last_error=error,
            delayed_notified=notified,
            updated_at=utcnow(),
        )
    )


async def attempts_for(conn: AsyncConnection, message_pk: str) -> list[Any]:
    query = (
        sa.select(delivery_attempts)
        .where(delivery_attempts.c.message_pk == message_pk)
        .order_by(delivery_attempts.c.created_at, delivery_attempts.c.id)
    )
    return list((await conn.execute(query)).all())


async def pending_count(conn: AsyncConnection) -> int:
    query = sa.select(sa.func.count()).select_from(outbound_queue).where(outbound_queue.c.status == "queued")
    return int((await conn.execute(query)).scalar_one())


async def next_due(conn: AsyncConnection) -> datetime | None:
    """When the earliest queued item is due (None when the queue is empty)."""
    query = sa.select(sa.func.min(outbound_queue.c.next_attempt_at)).where(outbound_queue.c.status == "queued")
    value = (await conn.execute(query)).scalar_one_or_none()
    return value if isinstance(value, datetime) else None
