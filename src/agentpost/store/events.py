"""The append-only event log: append, read after a position, render to the wire envelope."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store import messages as message_store
from agentpost.store import tables
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
        body["send"] = _send_payload(row)
    else:
        body.update(event.payload)
    return body


def _send_payload(row: Any) -> dict[str, Any]:
    return {
        "inbox_id": row.inbox_id,
        "thread_id": row.thread_id,
        "message_id": row.message_id,
        "timestamp": row.timestamp.isoformat(),
        "recipients": [*(row.to or []), *(row.cc or []), *(row.bcc or [])],
    }


async def get_cursor(conn: AsyncConnection, name: str) -> int | None:
    row = (await conn.execute(sa.select(cursors.c.position).where(cursors.c.name == name))).first()
    return int(row[0]) if row else None


async def set_cursor(conn: AsyncConnection, name: str, position: int) -> None:
    result = await conn.execute(cursors.update().where(cursors.c.name == name).values(position=position))
    if not result.rowcount:
        await conn.execute(cursors.insert().values(name=name, position=position))


# -- reading the log in commit order (the event feed and WebSockets) ------------------------------

# An id missing below a later committed one is waited for at most this long (measured on the
# later event's created_at), as the webhook fan-out does (store/webhooks.py GAP_GRACE).
GAP_GRACE = timedelta(seconds=5)
HORIZON_WINDOW = 10_000  # ids examined per horizon check

_PG_IDS_AND_BUSY = sa.text(
    # One statement, one snapshot: the ids visible in it and the newest transaction still running
    # when it was taken.
    "SELECT id, created_at, (SELECT coalesce(max(x::text::bigint), 0)"
    " FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS busy"
    " FROM events WHERE id > :position ORDER BY id LIMIT :window"
).columns(events.c.id, events.c.created_at, sa.column("busy", sa.BigInteger))
_PG_OLDEST_RUNNING = sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


@dataclass(frozen=True, slots=True)
class Horizon:
    position: int  # every event at or below it that will ever commit has committed
    held: bool  # a gap above it may still fill: look again soon


def horizon_sync(conn: sa.Connection, position: int) -> Horizon:
    """How far the log may be read from ``position`` without skipping an event that commits later.

    SQLite has one writer at a time and assigns ids inside it, so ids commit in order: the newest
    id is the horizon. On PostgreSQL ids come from a sequence when rows are inserted, so a later
    id can commit before an earlier one (two nodes, or two group commits). Reading up to the
    newest id could then skip the earlier one for good. So the horizon stops before the first gap
    in the ids, unless every transaction that was running when the gap was seen has ended since
    (then the missing id was rolled back: sequences do not roll back) or the gap is older than
    GAP_GRACE (a stuck or unrelated long transaction must not stall every subscriber).

    Known limit: a transaction that drew its id but had no transaction id yet when the snapshot
    was taken (the microseconds inside an INSERT that is its first write) is not seen as running.
    Every event written today follows other writes in its transaction.
    """
    if conn.dialect.name != "postgresql":
        newest = conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one()
        return Horizon(int(newest), held=False)
    rows = conn.execute(_PG_IDS_AND_BUSY, {"position": position, "window": HORIZON_WINDOW}).all()
    top = position
    for r in rows:
        if r.id != top + 1:
            break
        top = r.id
    else:
        return Horizon(top, held=False)
    # A gap after ``top``: its transaction still runs, or it rolled back.
    gap_next = next(r for r in rows if r.id > top)
    busy = int(rows[0].busy)
    if busy == 0 or int(conn.execute(_PG_OLDEST_RUNNING).scalar_one()) > busy:
        # Every transaction running at that snapshot has ended: whatever is missing up to the
        # newest id seen then never commits (ids at or below it were drawn before it committed).
        return Horizon(int(rows[-1].id), held=False)
    if utcnow() - gap_next.created_at >= GAP_GRACE:
        return Horizon(int(rows[-1].id), held=False)
    return Horizon(top, held=True)


async def horizon(conn: AsyncConnection, position: int) -> Horizon:
    return await conn.run_sync(horizon_sync, position)


async def position_of(conn: AsyncConnection, event_id: str) -> int | None:
    row = (await conn.execute(sa.select(events.c.id).where(events.c.event_id == event_id))).first()
    return int(row[0]) if row else None


async def event_id_at(conn: AsyncConnection, pk: int) -> str | None:
    row = (await conn.execute(sa.select(events.c.event_id).where(events.c.id == pk))).first()
    return str(row[0]) if row else None


def _matching_query(
    after: int,
    upto: int,
    organization_id: str,
    inbox_ids: frozenset[str] | None,
    event_types: frozenset[str] | None,
    limit: int,
) -> sa.Select[Any]:
    query = sa.select(events).where(
        events.c.id > after, events.c.id <= upto, events.c.organization_id == organization_id
    )
    if inbox_ids is not None:
        query = query.where(events.c.inbox_id.in_(sorted(inbox_ids)))
    if event_types is not None:
        query = query.where(events.c.event_type.in_(sorted(event_types)))
    return query.order_by(events.c.id).limit(limit)


async def matching(
    conn: AsyncConnection,
    after: int,
    upto: int,
    organization_id: str,
    inbox_ids: frozenset[str] | None,
    event_types: frozenset[str] | None,
    limit: int,
) -> list[EventRow]:
    """One organisation's events in (after, upto], oldest first; ``None`` filters match all."""
    rows = await conn.execute(_matching_query(after, upto, organization_id, inbox_ids, event_types, limit))
    return [_row(r) for r in rows]


def render_many(conn: sa.Connection, rows: list[EventRow]) -> list[dict[str, Any] | None]:
    """``render`` for many events with one query per table (the feed and WebSockets, in a reader
    thread): the same envelopes, None where the subject was deleted since."""
    message_pks = {
        r.payload["message_pk"] for r in rows if r.event_type.startswith(("message.received", "message.sent"))
    }
    found: dict[str, Any] = {}
    if message_pks:
        found = {m.id: m for m in conn.execute(sa.select(tables.messages).where(tables.messages.c.id.in_(message_pks)))}
    thread_ids = {r.payload["thread_id"] for r in rows if r.event_type.startswith("message.received")}
    threads: dict[str, Any] = {}
    if thread_ids:
        threads = {t.id: t for t in conn.execute(sa.select(tables.threads).where(tables.threads.c.id.in_(thread_ids)))}
    out: list[dict[str, Any] | None] = []
    for event in rows:
        body: dict[str, Any] = {"type": "event", "event_type": event.event_type, "event_id": event.event_id}
        if event.event_type.startswith("message.received"):
            row = found.get(event.payload["message_pk"])
            thread = threads.get(event.payload["thread_id"])
            if row is None or thread is None:
                out.append(None)
                continue
            body["message"] = message_store.to_message(row).model_dump(mode="json", by_alias=True, exclude_none=True)
            body["thread"] = message_store.to_thread_item(thread).model_dump(mode="json", exclude_none=True)
        elif event.event_type == "message.sent":
            row = found.get(event.payload["message_pk"])
            if row is None:
                out.append(None)
                continue
            body["send"] = _send_payload(row)
        else:
            body.update(event.payload)
        out.append(body)
    return out


@dataclass(frozen=True, slots=True)
class FeedRead:
    bodies: list[dict[str, Any]]  # wire envelopes, oldest first
    position: int  # read up to here
    held: bool  # a missing id may still commit below newer events: read again soon
    more: bool  # the limit was reached: read again now


def read_feed(
    conn: sa.Connection,
    position: int,
    organization_id: str,
    inbox_ids: frozenset[str] | None,
    event_types: frozenset[str] | None,
    hidden: frozenset[str],
    limit: int,
) -> FeedRead:
    """One organisation's rendered events after ``position`` up to the settled end of the log,
    in one read transaction (one thread hop: a subscriber's latency is mostly hops under load)."""
    settled = horizon_sync(conn, position)
    if settled.position <= position:
        return FeedRead([], position, settled.held, more=False)
    query = _matching_query(position, settled.position, organization_id, inbox_ids, event_types, limit)
    rows = [_row(r) for r in conn.execute(query)]
    bodies = [b for b in render_many(conn, [r for r in rows if r.event_type not in hidden]) if b is not None]
    if len(rows) == limit:
        return FeedRead(bodies, rows[-1].pk, settled.held, more=True)
    return FeedRead(bodies, settled.position, settled.held, more=False)
