"""Outbound queue rows: enqueue, claim with a lease, record attempts, retire. The only code that changes queue state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agentpost.model import new_id, utcnow
from agentpost.store import leases
from agentpost.store import messages as message_store
from agentpost.store.bulk import BulkInsert
from agentpost.store.messages import NewMessage
from agentpost.store.tables import blobs, delivery_attempts, events, outbound_queue, suppressions

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


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
    delay_notices: int  # message.delayed events already sent for this item
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
    lease: timedelta | None = None,
) -> list[dict[str, Any]]:
    """One row per recipient domain (recipients of one domain share one SMTP transaction).

    ``lease``: the rows start leased to the committing process, their first attempt counted, as
    a claim would leave them (the submitting process delivers them without claiming)."""
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
            "attempts": 0 if lease is None else 1,
            "next_attempt_at": now,
            "lease_until": None if lease is None else now + lease,
            "delay_notices": 0,
            "expires_at": now + lifetime,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
        }
        for domain, rcpts in by_domain.items()
    ]


_QUEUE_ROWS = BulkInsert(
    outbound_queue,
    [
        "id", "organization_id", "inbox_id", "message_pk", "message_id", "thread_id", "blob_id", "mail_from",
        "rcpt_domain", "rcpt_to", "smtputf8", "status", "attempts", "next_attempt_at", "lease_until",
        "delay_notices", "expires_at", "last_error", "created_at", "updated_at",
    ],
)  # fmt: skip
_ATTEMPT_ROWS = BulkInsert(
    delivery_attempts,
    [
        "id", "queue_id", "message_pk", "rcpt", "outcome", "remote_host", "remote_ip", "code", "enhanced", "reply",
        "tls_version", "tls_verified", "duration_ms", "details", "created_at",
    ],
)  # fmt: skip
_EVENT_ROWS = BulkInsert(events, ["event_id", "organization_id", "inbox_id", "event_type", "payload", "created_at"])


def enqueue(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert queue rows in the caller's (synchronous, writer-thread) transaction."""
    _QUEUE_ROWS.execute(conn, rows)


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A sent copy to store, with the remote recipients to queue it for."""

    message: NewMessage
    remote: list[str]
    smtputf8: bool
    lifetime: timedelta
    # Queue the items already leased to this process (rows_for): its worker delivers them from
    # memory, so no claim transaction reads them back. None: queued for any worker to claim.
    lease: timedelta | None = None


@dataclass(frozen=True, slots=True)
class SavedSent:
    thread_id: str
    leased: list[QueueItem]  # the queue items leased at insertion (empty without ``lease``)


def save_sent(conn: sa.Connection, batch: list[SentMessage]) -> list[SavedSent]:
    """Sent copies (message, thread, message.sent event) and their queue items, in the caller's
    one transaction (writer thread)."""
    saved = message_store.save_batch(conn, [s.message for s in batch])
    rows: list[dict[str, Any]] = []
    out: list[SavedSent] = []
    for sent, stored in zip(batch, saved, strict=True):
        item = sent.message
        mine = rows_for(
            organization_id=item.organization_id,
            inbox_id=item.inbox_id,
            message_pk=item.pk,
            message_id=item.message_id,
            thread_id=stored.thread_id,
            blob_id=item.raw_key,
            mail_from=item.mail_from,
            rcpt_to=sent.remote,
            smtputf8=sent.smtputf8,
            lifetime=sent.lifetime,
            lease=sent.lease,
        )
        rows += mine
        leased = [leased_item(r) for r in mine] if sent.lease is not None else []
        out.append(SavedSent(stored.thread_id, leased))
    enqueue(conn, rows)
    return out


def _item(r: Any, attempts: int) -> QueueItem:
    return QueueItem(
        r.id, r.organization_id, r.inbox_id, r.message_pk, r.message_id, r.thread_id, r.blob_id, r.mail_from,
        r.rcpt_domain, list(r.rcpt_to), bool(r.smtputf8), attempts, int(r.delay_notices), r.expires_at,
        r.created_at,
    )  # fmt: skip


def leased_item(row: dict[str, Any]) -> QueueItem:
    """The item of a row ``rows_for`` made with a lease, as a claim would have returned it."""
    return _item(SimpleNamespace(**row), attempts=int(row["attempts"]))


def claim_with_raws(conn: sa.Connection, limit: int, lease: timedelta) -> list[tuple[QueueItem, bytes | None]]:
    """Due items, leased to this worker (on PostgreSQL rows locked by another worker are skipped),
    with their raw messages, in one synchronous transaction (writer thread). The attempt is
    counted before dialling."""
    rows = leases.claim_sync(
        conn,
        outbound_queue,
        outbound_queue.c.status == "queued",
        limit,
        lease,
        attempts=outbound_queue.c.attempts + 1,
        updated_at=utcnow(),
    )
    if not rows:
        return []
    ids = {r.blob_id for r in rows}
    found = {r.id: bytes(r.data) for r in conn.execute(sa.select(blobs.c.id, blobs.c.data).where(blobs.c.id.in_(ids)))}
    return [(_item(r, attempts=r.attempts + 1), found.get(r.blob_id)) for r in rows]


def next_due_sync(conn: sa.Connection) -> datetime | None:
    """When the earliest queued item is due (None when the queue is empty); a leased item is due
    when its lease runs out, so items in flight do not make every poll look for work."""
    value = conn.execute(_NEXT_DUE).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


@dataclass(slots=True)
class Settlement:
    """Everything one delivery outcome changes; several are written in one transaction (``settle``).

    ``item_id`` names the queue row to update (None when the outcome arrived later, by mail):
    ``status`` "delivered"/"bounced" retires it, "queued" keeps it for ``rcpt_to`` at ``next_attempt_at``.
    """

    item_id: str | None = None
    status: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    delay_notices: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)  # delivery_attempts rows (without id)
    events: list[tuple[str, str | None, str, dict[str, Any]]] = field(default_factory=list)  # org, inbox, type, payload
    suppressions: list[tuple[str, str, str, str, str | None]] = field(
        default_factory=list
    )  # org, scope, address, reason, reply


_RETIRE = (
    outbound_queue.update()
    .where(outbound_queue.c.id == sa.bindparam("item_id"))
    .values(lease_until=None, status=sa.bindparam("status"))
)
_RETRY = outbound_queue.update().where(outbound_queue.c.id == sa.bindparam("item_id")).values(lease_until=None)


def settle(conn: sa.Connection, batch: list[Settlement]) -> list[None]:
    """Write delivery outcomes in the caller's one transaction (writer thread)."""
    now = utcnow()
    _ATTEMPT_ROWS.execute(
        conn, [{"id": new_id("att_"), "created_at": now, "details": None, **a} for s in batch for a in s.attempts]
    )
    event_rows = [
        {
            "event_id": new_id("evt_"),
            "organization_id": org,
            "inbox_id": inbox,
            "event_type": kind,
            "payload": payload,
            "created_at": now,
        }
        for s in batch
        for org, inbox, kind, payload in s.events
    ]
    _EVENT_ROWS.execute(conn, event_rows)
    for s in batch:
        for org, scope, address, reason, reply in s.suppressions:
            key = {"organization_id": org, "scope": scope, "address": address.lower()}
            conn.execute(suppressions.delete().where(*(getattr(suppressions.c, k) == v for k, v in key.items())))
            conn.execute(suppressions.insert().values(**key, reason=reason, reply=reply, created_at=now))
    # One executemany per kind of change, with statements built once: building an UPDATE per
    # item cost more than SQLite running it.
    final = [
        {"item_id": s.item_id, "status": s.status, "last_error": s.last_error, "updated_at": now}
        for s in batch
        if s.item_id is not None and s.status != "queued"
    ]
    again = [
        {
            "item_id": s.item_id,
            "last_error": s.last_error,
            "updated_at": now,
            "rcpt_to": s.rcpt_to,
            "next_attempt_at": s.next_attempt_at,
            "delay_notices": s.delay_notices,
        }
        for s in batch
        if s.item_id is not None and s.status == "queued"
    ]
    if final:
        conn.execute(_RETIRE, final)
    if again:
        conn.execute(_RETRY, again)
    return [None] * len(batch)


def release_unattempted(conn: sa.Connection, item_ids: list[str]) -> None:
    """Give back items leased to this process that it never dialled (it is stopping): due again
    at once for any worker, their counted attempt taken back."""
    leases.release_sync(
        conn,
        outbound_queue,
        outbound_queue.c.status == "queued",
        item_ids,
        attempts=outbound_queue.c.attempts - 1,
        updated_at=utcnow(),
    )


def write_outbound(conn: sa.Connection, batch: list[SentMessage | Settlement]) -> list[SavedSent | None]:
    """Sent copies and delivery outcomes in one transaction (writer thread): a process's sends
    and its deliveries' results share its commits, where two committers took the one SQLite
    write lock in turn twice as often. One result per item: SavedSent for a sent copy, None for
    an outcome."""
    sent = [item for item in batch if isinstance(item, SentMessage)]
    outcomes = [item for item in batch if isinstance(item, Settlement)]
    saved = iter(save_sent(conn, sent) if sent else [])
    if outcomes:
        settle(conn, outcomes)
    return [next(saved) if isinstance(item, SentMessage) else None for item in batch]


def needs_fsync(batch: list[SentMessage | Settlement]) -> bool:
    """Sent copies were promised to API callers (durable); outcomes alone may commit without an fsync."""
    return any(isinstance(item, SentMessage) for item in batch)


async def renew_leases(conn: AsyncConnection, item_ids: list[str], lease: timedelta) -> None:
    await leases.renew(conn, outbound_queue, item_ids, lease)


async def attempts_for(conn: AsyncConnection, message_pk: str) -> list[Any]:
    query = (
        sa.select(delivery_attempts)
        .where(delivery_attempts.c.message_pk == message_pk)
        .order_by(delivery_attempts.c.created_at, delivery_attempts.c.id)
    )
    return list((await conn.execute(query)).all())


def save_returned(conn: sa.Connection, message: NewMessage, settlement: Settlement) -> message_store.Saved:
    """A report that came back by mail (VERP): its copy in the sender's inbox and what it
    settles (attempts, events, suppressions), in the caller's one transaction (writer thread)."""
    (saved,) = message_store.save_batch(conn, [message])
    settle(conn, [settlement])
    return saved


_NEXT_DUE = sa.select(
    sa.func.min(
        sa.case(
            (outbound_queue.c.lease_until > outbound_queue.c.next_attempt_at, outbound_queue.c.lease_until),
            else_=outbound_queue.c.next_attempt_at,
        )
    )
).where(outbound_queue.c.status == "queued")
