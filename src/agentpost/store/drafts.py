"""Draft rows: create, read, page, change, take for sending (one sender wins), claim due scheduled ones, delete."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost import schemas
from agentpost.model import utcnow
from agentpost.store import leases
from agentpost.store.tables import drafts

PREVIEW_CHARS = 200


def _attachments(row: Any) -> list[schemas.Attachment] | None:
    items = row.attachments or []
    if not items:
        return None
    return [
        schemas.Attachment(
            attachment_id=a["attachment_id"],
            filename=a.get("filename"),
            size=a["size"],
            content_type=a.get("content_type"),
            content_disposition=a.get("content_disposition"),
            content_id=a.get("content_id"),
        )
        for a in items
    ]


def _preview(row: Any) -> str | None:
    text = " ".join((row.text or "").split())
    return text[:PREVIEW_CHARS] or None


def _common(row: Any) -> dict[str, Any]:
    return {
        "inbox_id": row.inbox_id,
        "draft_id": row.id,
        "labels": list(row.labels or []),
        "to": row.to or None,
        "cc": row.cc or None,
        "bcc": row.bcc or None,
        "subject": row.subject,
        "preview": _preview(row),
        "attachments": _attachments(row),
        "in_reply_to": row.in_reply_to,
        "forward_of": row.forward_of,
        "send_status": row.send_status,
        "send_at": row.send_at,
        "updated_at": row.updated_at,
    }


def to_item(row: Any) -> schemas.DraftItem:
    return schemas.DraftItem(**_common(row))


def to_draft(row: Any) -> schemas.Draft:
    return schemas.Draft(
        **_common(row),
        client_id=row.client_id,
        reply_to=row.reply_to or None,
        text=row.text,
        html=row.html,
        references=row.references or None,
        created_at=row.created_at,
        send_error=row.send_error,
    )


async def create(conn: AsyncConnection, **values: Any) -> Any:
    now = utcnow()
    values.setdefault("created_at", now)
    values.setdefault("updated_at", now)
    await conn.execute(drafts.insert().values(**values))
    return await get_row(conn, values["id"])


async def get_row(conn: AsyncConnection, draft_id: str) -> Any | None:
    return (await conn.execute(sa.select(drafts).where(drafts.c.id == draft_id))).first()


async def attachment(conn: AsyncConnection, draft_id: str, attachment_id: str) -> dict[str, Any] | None:
    """One stored attachment of a draft (its bytes base64 in ``content``), or None."""
    row = await get_row(conn, draft_id)
    items: list[dict[str, Any]] = (row.attachments or []) if row is not None else []
    return next((a for a in items if a["attachment_id"] == attachment_id), None)


async def by_client_id(conn: AsyncConnection, inbox_id: str, client_id: str) -> Any | None:
    query = sa.select(drafts).where(drafts.c.inbox_id == inbox_id, drafts.c.client_id == client_id)
    return (await conn.execute(query)).first()


async def list_page(
    conn: AsyncConnection,
    organization_id: str,
    inbox_id: str | None,
    limit: int,
    after: str | None,
    *,
    labels: list[str] | None = None,
    before: datetime | None = None,
    since: datetime | None = None,
    ascending: bool = False,
) -> list[Any]:
    """One page (limit + 1 rows, to tell whether there is more), ordered by (updated_at, id)."""
    query = sa.select(drafts).where(drafts.c.organization_id == organization_id)
    if inbox_id is not None:
        query = query.where(drafts.c.inbox_id == inbox_id)
    if before is not None:
        query = query.where(drafts.c.updated_at < before)
    if since is not None:
        query = query.where(drafts.c.updated_at > since)
    if after:
        anchor = await get_row(conn, after)
        if anchor is not None:
            newer = drafts.c.updated_at > anchor.updated_at if ascending else drafts.c.updated_at < anchor.updated_at
            tie = drafts.c.id > anchor.id if ascending else drafts.c.id < anchor.id
            query = query.where(sa.or_(newer, sa.and_(drafts.c.updated_at == anchor.updated_at, tie)))
    if ascending:
        query = query.order_by(drafts.c.updated_at, drafts.c.id)
    else:
        query = query.order_by(drafts.c.updated_at.desc(), drafts.c.id.desc())
    if not labels:
        return list((await conn.execute(query.limit(limit + 1))).all())
    # Labels live in a JSON list: filter after reading (drafts are few per organisation).
    wanted = set(labels)
    return [r for r in (await conn.execute(query)).all() if wanted <= set(r.labels or [])][: limit + 1]


def _free(now: datetime) -> sa.ColumnElement[bool]:
    """Not being sent: not ``sending``, or its sender's lease ran out."""
    return sa.or_(
        drafts.c.send_status.is_(None),
        drafts.c.send_status != "sending",
        drafts.c.lease_until.is_(None),
        drafts.c.lease_until < now,
    )


async def update(conn: AsyncConnection, draft_id: str, *, unless_sending: bool = False, **values: Any) -> bool:
    """Set columns; with ``unless_sending``, only while no sender holds the draft. Whether a row changed."""
    now = utcnow()
    query = drafts.update().where(drafts.c.id == draft_id)
    if unless_sending:
        query = query.where(_free(now))
    result = await conn.execute(query.values(**values, updated_at=now))
    return bool(result.rowcount)


async def delete(conn: AsyncConnection, draft_id: str, *, unless_sending: bool = False) -> bool:
    query = drafts.delete().where(drafts.c.id == draft_id)
    if unless_sending:
        query = query.where(_free(utcnow()))
    result = await conn.execute(query)
    return bool(result.rowcount)


async def take(conn: AsyncConnection, draft_id: str, statuses: list[str | None], lease: timedelta) -> bool:
    """Mark one draft ``sending`` under a lease if its status is one of ``statuses`` and nobody holds
    it: one conditional UPDATE, so of an explicit send, an approval and the scheduler racing for the
    same draft exactly one wins."""
    now = utcnow()
    named = [s for s in statuses if s is not None]
    allowed: sa.ColumnElement[bool] = drafts.c.send_status.in_(named) if named else sa.false()
    if None in statuses:
        allowed = sa.or_(allowed, drafts.c.send_status.is_(None))
    result = await conn.execute(
        drafts.update()
        .where(
            drafts.c.id == draft_id,
            allowed,
            sa.or_(drafts.c.lease_until.is_(None), drafts.c.lease_until < now),
        )
        .values(send_status="sending", lease_until=now + lease)
    )
    return bool(result.rowcount)


async def claim_due(conn: AsyncConnection, limit: int, lease: timedelta) -> list[Any]:
    """Scheduled drafts whose time has come, leased to this scheduler (SKIP LOCKED on PostgreSQL).
    A ``sending`` row whose lease ran out belonged to a scheduler that died mid-send: it is taken
    again, and the send's idempotency key (the draft id) keeps it from going out twice."""
    pending = drafts.c.send_status.in_(["scheduled", "sending"])
    return await leases.claim(conn, drafts, pending, limit, lease, send_status="sending")


async def release(conn: AsyncConnection, draft_id: str, **values: Any) -> None:
    """Give a taken draft back (a failed or held send), with the columns to set."""
    await update(conn, draft_id, lease_until=None, **values)
