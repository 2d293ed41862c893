"""Webhook subscriptions and their per-event deliveries (fan-out, claim with a lease, result)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store import events as event_store
from agentpost.store import leases
from agentpost.store.tables import cursors, events, webhook_deliveries, webhooks

FANOUT_CURSOR = "webhooks.fanout"
# A gap in event ids (a concurrent transaction on another node not yet committed, or a burned
# sequence value) is waited for this long before it is skipped.
GAP_GRACE = timedelta(seconds=5)


async def create(conn: AsyncConnection, **values: Any) -> str:
    now = utcnow()
    webhook_id = new_id("wh_")
    await conn.execute(webhooks.insert().values(id=webhook_id, created_at=now, updated_at=now, **values))
    return webhook_id


async def get_row(conn: AsyncConnection, organization_id: str, webhook_id: str) -> Any | None:
    query = sa.select(webhooks).where(webhooks.c.organization_id == organization_id, webhooks.c.id == webhook_id)
    return (await conn.execute(query)).first()


async def by_client_id(conn: AsyncConnection, organization_id: str, client_id: str) -> Any | None:
    query = sa.select(webhooks).where(webhooks.c.organization_id == organization_id, webhooks.c.client_id == client_id)
    return (await conn.execute(query)).first()


async def list_rows(conn: AsyncConnection, organization_id: str, limit: int, after_id: str | None) -> list[Any]:
    query = sa.select(webhooks).where(webhooks.c.organization_id == organization_id)
    if after_id:
        query = query.where(webhooks.c.id < after_id)
    return list((await conn.execute(query.order_by(webhooks.c.id.desc()).limit(limit + 1))).all())


async def update(conn: AsyncConnection, webhook_id: str, **values: Any) -> None:
    await conn.execute(webhooks.update().where(webhooks.c.id == webhook_id).values(**values, updated_at=utcnow()))


async def delete(conn: AsyncConnection, webhook_id: str) -> None:
    await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.webhook_id == webhook_id))
    await conn.execute(webhooks.delete().where(webhooks.c.id == webhook_id))


def matches(hook: Any, event: event_store.EventRow) -> bool:
    if not hook.enabled:
        return False
    return _selects(hook, event)


def _selects(hook: Any, event: event_store.EventRow) -> bool:
    """Whether ``event`` is one ``hook`` subscribes to, enabled or not."""
    if hook.organization_id != event.organization_id:
        return False
    if event.event_type not in (hook.event_types or []):
        return False
    if hook.inbox_id is not None and event.inbox_id != hook.inbox_id:
        return False
    inbox_ids = hook.inbox_ids
    return not inbox_ids or (event.inbox_id is not None and event.inbox_id in inbox_ids)


def _delivery(webhook_id: str, event_pk: int, now: datetime) -> dict[str, Any]:
    return {
        "id": new_id("whd_"),
        "webhook_id": webhook_id,
        "event_pk": event_pk,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


async def fan_out(conn: AsyncConnection, batch: int = 500) -> int:
    """Turn new events into delivery rows for every matching webhook; advance the cursor.

    Runs in the caller's write transaction: the cursor row is locked (PostgreSQL) so two nodes
    never fan out the same event twice.
    """
    row = (
        await conn.execute(sa.select(cursors.c.position).where(cursors.c.name == FANOUT_CURSOR).with_for_update())
    ).first()
    if row is None:
        await conn.execute(cursors.insert().values(name=FANOUT_CURSOR, position=0))
        position = 0
    else:
        position = int(row[0])
    new_events = await event_store.after(conn, position, batch)
    if not new_events:
        return 0
    hooks = list((await conn.execute(sa.select(webhooks).where(webhooks.c.enabled.is_(True)))).all())
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for event in new_events:
        if event.pk != position + 1 and now - event.created_at < GAP_GRACE:
            break  # an earlier id may still commit: wait for it
        position = event.pk
        for hook in hooks:
            # Only events after the webhook's creation: a new subscription does not replay history.
            if matches(hook, event) and event.created_at >= hook.created_at:
                rows.append(_delivery(hook.id, event.pk, now))
    if rows:
        await conn.execute(webhook_deliveries.insert(), rows)
    await conn.execute(cursors.update().where(cursors.c.name == FANOUT_CURSOR).values(position=position))
    return len(rows)


@dataclass(slots=True)
class Claimed:
    delivery_id: str
    webhook: Any
    event: event_store.EventRow
    attempts: int
    created_at: datetime


# Deliveries of a disabled webhook wait where they are: re-enabling it resumes them.
_DELIVERABLE = sa.and_(
    webhook_deliveries.c.status == "pending",
    webhook_deliveries.c.webhook_id.in_(sa.select(webhooks.c.id).where(webhooks.c.enabled.is_(True))),
)


async def claim_due(conn: AsyncConnection, limit: int, lease: timedelta) -> list[Claimed]:
    rows = await leases.claim(conn, webhook_deliveries, _DELIVERABLE, limit, lease)
    if not rows:
        return []
    hook_rows = {
        h.id: h
        for h in (await conn.execute(sa.select(webhooks).where(webhooks.c.id.in_({r.webhook_id for r in rows})))).all()
    }
    event_rows = {
        e.id: e
        for e in (await conn.execute(sa.select(events).where(events.c.id.in_({r.event_pk for r in rows})))).all()
    }
    claimed = []
    for r in rows:
        hook = hook_rows.get(r.webhook_id)
        ev = event_rows.get(r.event_pk)
        if hook is None or ev is None:
            continue
        claimed.append(
            Claimed(
                r.id,
                hook,
                event_store.EventRow(
                    ev.id, ev.event_id, ev.organization_id, ev.inbox_id, ev.event_type, ev.payload, ev.created_at
                ),
                r.attempts,
                r.created_at,
            )
        )
    return claimed


async def record_attempt(
    conn: AsyncConnection,
    delivery_id: str,
    *,
    status: str,
    attempts: int,
    next_attempt_at: datetime,
    http_status: int | None,
    error: str | None,
) -> None:
    await conn.execute(
        webhook_deliveries.update()
        .where(webhook_deliveries.c.id == delivery_id)
        .values(
            status=status,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            lease_until=None,
            last_status=http_status,
            last_error=error,
            updated_at=utcnow(),
        )
    )


async def deliveries_for(conn: AsyncConnection, webhook_id: str) -> list[Any]:
    query = sa.select(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
    return list((await conn.execute(query.order_by(webhook_deliveries.c.created_at))).all())


async def next_due(conn: AsyncConnection) -> datetime | None:
    query = sa.select(sa.func.min(webhook_deliveries.c.next_attempt_at)).where(_DELIVERABLE)
    value = (await conn.execute(query)).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


async def any_enabled(conn: AsyncConnection) -> bool:
    return (
        await conn.execute(sa.select(webhooks.c.id).where(webhooks.c.enabled.is_(True)).limit(1))
    ).first() is not None


async def record_success(conn: AsyncConnection, webhook_id: str) -> None:
    """A 2xx ends the webhook's run of failures."""
    await conn.execute(
        webhooks.update()
        .where(webhooks.c.id == webhook_id, webhooks.c.consecutive_failures != 0)
        .values(consecutive_failures=0)
    )


async def record_failure(conn: AsyncConnection, webhook_id: str, disable_after: int) -> str | None:
    """Count a failed attempt; at ``disable_after`` in a row disable the webhook.

    Returns the ``webhook.disabled`` event id when this failure disabled it. The increment and the
    conditional disable are single statements, so concurrent failures (several deliveries in
    flight, several nodes) disable it and log the event exactly once.
    """
    await conn.execute(
        webhooks.update()
        .where(webhooks.c.id == webhook_id)
        .values(consecutive_failures=webhooks.c.consecutive_failures + 1)
    )
    if disable_after <= 0:
        return None
    reason = f"{disable_after} consecutive failed deliveries"
    result = await conn.execute(
        webhooks.update()
        .where(
            webhooks.c.id == webhook_id,
            webhooks.c.enabled.is_(True),
            webhooks.c.consecutive_failures >= disable_after,
        )
        .values(enabled=False, disabled_reason=reason, updated_at=utcnow())
    )
    if result.rowcount != 1:
        return None
    hook = (await conn.execute(sa.select(webhooks).where(webhooks.c.id == webhook_id))).one()
    return await event_store.append(
        conn,
        hook.organization_id,
        hook.inbox_id,
        "webhook.disabled",
        {
            "webhook": {
                "webhook_id": hook.id,
                "url": hook.url,
                "consecutive_failures": hook.consecutive_failures,
                "reason": reason,
            }
        },
    )


async def replay(conn: AsyncConnection, hook: Any, after: datetime, before: datetime, limit: int) -> int:
    """Queue a new delivery of every event in [after, before) the webhook subscribes to.

    Only events the fan-out has passed: later ones reach the webhook through it anyway. The
    deliveries carry the original event, so receivers see the same ``event_id`` and can dedupe.
    """
    position = await event_store.get_cursor(conn, FANOUT_CURSOR) or 0
    query = sa.select(events).where(
        events.c.organization_id == hook.organization_id,
        events.c.id <= position,
        events.c.created_at >= after,
        events.c.created_at < before,
        events.c.event_type.in_(list(hook.event_types or [])),
    )
    if hook.inbox_id is not None:
        query = query.where(events.c.inbox_id == hook.inbox_id)
    if hook.inbox_ids:
        query = query.where(events.c.inbox_id.in_(list(hook.inbox_ids)))
    now = utcnow()
    # The same selection as _selects, in SQL.
    pks = (await conn.execute(query.with_only_columns(events.c.id).order_by(events.c.id).limit(limit))).scalars()
    rows = [_delivery(hook.id, pk, now) for pk in pks]
    if rows:
        await conn.execute(webhook_deliveries.insert(), rows)
    return len(rows)
