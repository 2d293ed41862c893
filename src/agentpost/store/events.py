"""The append-only event log: append, read after a position, render to the wire envelope."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store import messages as message_store
from agentpost.store.tables import cursors, events


@dataclass(frozen=True, slots=True)
class EventRow:
    pk: int
    event_id: str
    organization_id: str
    inbox_id: str | None
    event_type: str
    payload: dict[str, Any]
    created_at: datetime


def _row(r: Any) -> EventRow:
    return EventRow(r.id, r.event_id, r.organization_id, r.inbox_id, r.event_type, r.payload, r.created_at)


async def append(
    conn: AsyncConnection, organization_id: str, inbox_id: str | None, event_type: str, payload: dict[str, Any]
) -> str:
    event_id = new_id("evt_")
    await conn.execute(
        events.insert().values(
            event_id=event_id,
            organization_id=organization_id,
            inbox_id=inbox_id,
            event_type=event_type,
            payload=payload,
            created_at=utcnow(),
        )
    )
    return event_id


async def after(conn: AsyncConnection, position: int, limit: int) -> list[EventRow]:
    rows = await conn.execute(sa.select(events).where(events.c.id > position).order_by(events.c.id).limit(limit))
    return [_row(r) for r in rows]


async def get(conn: AsyncConnection, pk: int) -> EventRow | None:
    row = (await conn.execute(sa.select(events).where(events.c.id == pk))).first()
    return _row(row) if row else None


async def last_position(conn: AsyncConnection) -> int:
    return int((await conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0)))).scalar_one())


async def render(conn: AsyncConnection, event: EventRow) -> dict[str, Any] | None:
    """The wire envelope {type, event_type, event_id, <payload>} shared by webhooks and sockets."""
    body: dict[str, Any] = {"type": "event", "event_type": event.event_type, "event_id": event.event_id}
    if event.event_type.startswith("message.received"):
        row = await message_store.get_by_pk(conn, event.payload["message_pk"])
        thread = await message_store.get_thread_row(conn, event.payload["thread_id"])
        if row is None or thread is None:
            return None  # deleted since: nothing left to tell
        body["message"] = message_store.to_message(row).model_dump(mode="json", by_alias=True, exclude_none=True)
        body["thread"] = message_store.to_thread_item(thread).model_dump(mode="json", exclude_none=True)
    elif event.event_type == "message.sent":
        row = await message_store.get_by_pk(conn, event.payload["message_pk"])
        if row is None:
            return None
        body["send"] = {
            "inbox_id": row.inbox_id,
            "thread_id": row.thread_id,
            "message_id": row.message_id,
            "timestamp": row.timestamp.isoformat(),
            "recipients": [*(row.to or []), *(row.cc or []), *(row.bcc or [])],
        }
    else:
        body.update(event.payload)
    return body


async def get_cursor(conn: AsyncConnection, name: str) -> int | None:
    row = (await conn.execute(sa.select(cursors.c.position).where(cursors.c.name == name))).first()
    return int(row[0]) if row else None


async def set_cursor(conn: AsyncConnection, name: str, position: int) -> None:
    result = await conn.execute(cursors.update().where(cursors.c.name == name).values(position=position))
    if not result.rowcount:
        await conn.execute(cursors.insert().values(name=name, position=position))
