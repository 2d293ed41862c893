"""Claiming due work rows with a lease: the one mechanism behind every queue (webhook deliveries, outbound mail).

A row is due when its ``next_attempt_at`` has passed and no unexpired lease holds it. Claiming
sets the lease in the caller's write transaction, so a worker that dies leaves its rows to be
claimed again once the lease runs out. On PostgreSQL the selected rows are locked with
``FOR UPDATE SKIP LOCKED``, so several processes never claim the same row; SQLite has one writer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agentpost.model import utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


def _due(table: sa.Table, pending: sa.ColumnElement[bool], limit: int, now: datetime) -> sa.Select[Any]:
    return (
        sa.select(table)
        .where(
            pending,
            table.c.next_attempt_at <= now,
            sa.or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(table.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def claim(
    conn: AsyncConnection,
    table: sa.Table,
    pending: sa.ColumnElement[bool],
    limit: int,
    lease: timedelta,
    **on_claim: Any,
) -> list[Any]:
    """Due rows matching ``pending``, oldest due first, now leased; ``on_claim`` sets more columns."""
    now = utcnow()
    rows = list((await conn.execute(_due(table, pending, limit, now))).all())
    if rows:
        await conn.execute(
            table.update().where(table.c.id.in_([r.id for r in rows])).values(lease_until=now + lease, **on_claim)
        )
    return rows


def claim_sync(
    conn: sa.Connection,
    table: sa.Table,
    pending: sa.ColumnElement[bool],
    limit: int,
    lease: timedelta,
    **on_claim: Any,
) -> list[Any]:
    """``claim`` in the caller's synchronous transaction (the writer thread)."""
    now = utcnow()
    rows = list(conn.execute(_due(table, pending, limit, now)).all())
    if rows:
        conn.execute(
            table.update().where(table.c.id.in_([r.id for r in rows])).values(lease_until=now + lease, **on_claim)
        )
    return rows


def release_sync(
    conn: sa.Connection, table: sa.Table, pending: sa.ColumnElement[bool], ids: list[str], **on_release: Any
) -> None:
    """Give back rows matching ``pending`` that this worker holds, before their lease ends: due
    again at once for any worker. ``on_release`` sets more columns (synchronous, writer thread)."""
    if ids:
        conn.execute(table.update().where(table.c.id.in_(ids), pending).values(lease_until=None, **on_release))


async def renew(conn: AsyncConnection, table: sa.Table, ids: list[str], lease: timedelta) -> None:
    """Extend the leases of rows this worker still holds (work in flight outlives one lease)."""
    if ids:
        await conn.execute(
            table.update()
            .where(table.c.id.in_(ids), table.c.lease_until.is_not(None))
            .values(lease_until=utcnow() + lease)
        )
