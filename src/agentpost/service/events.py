"""Reading the event log for a caller: scope and filters, commit order, and waiting for what comes next."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from agentpost import model
from agentpost.errors import BadRequest, Invalid
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.service.webhooks import EVENT_TYPES
from agentpost.store import events as event_store

MAX_WAIT = 30.0  # seconds a long-poll may hold the request
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
# An event id below a committed one is still missing (PostgreSQL, store/events.py horizon): its
# transaction is about to commit or has rolled back; look again this soon rather than at the
# next wake-up, which a rollback never sends.
HELD_RECHECK = 0.01
# How far back a new WebSocket subscription looks for the settled end of the log (PostgreSQL).
_START_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one caller receives: its organisation, optionally some inboxes and event types."""

    organization_id: str
    inbox_ids: frozenset[str] | None  # None: every inbox, and organisation events
    event_types: frozenset[str] | None  # None: every type
    hidden: frozenset[str]  # received-mail variants whose label the key may not read

    def wire(self) -> dict[str, Any]:
        """The filters as the ``subscribed`` reply echoes them."""
        return {
            "event_types": sorted(self.event_types) if self.event_types is not None else None,
            "inbox_ids": sorted(self.inbox_ids) if self.inbox_ids is not None else None,
        }


def subscription(who: Principal, event_types: list[str] | None, inbox_ids: list[str] | None) -> Subscription:
    """Check the filters against the key: events carry messages, so ``message_read`` is needed;
    an inbox-scoped key sees only its inbox, and naming another is 404 like everywhere else."""
    who.require("message_read")
    types: frozenset[str] | None = None
    if event_types:
        unknown = sorted(set(event_types) - EVENT_TYPES)
        if unknown:
            raise Invalid(
                f"unknown event types: {', '.join(unknown)}",
                [{"path": "event_types", "message": f"one of {', '.join(sorted(EVENT_TYPES))}"}],
            )
        types = frozenset(event_types)
    inboxes: frozenset[str] | None = None
    if inbox_ids:
        for inbox_id in inbox_ids:
            who.check_inbox(inbox_id)
        inboxes = frozenset(i.lower() for i in inbox_ids)
    elif who.inbox_id is not None:
        inboxes = frozenset({who.inbox_id})
    hidden = frozenset(
        f"message.received.{label}"
        for label in (model.LABEL_SPAM, model.LABEL_BLOCKED, model.LABEL_UNAUTHENTICATED)
        if not who.can(f"label_{label}_read")
    )
    return Subscription(who.organization_id, inboxes, types, hidden)


async def read(ctx: Context, sub: Subscription, position: int, limit: int) -> event_store.FeedRead:
    """The caller's events after ``position`` up to the settled end of the log, rendered."""
    return await ctx.db.run_read(
        event_store.read_feed,
        position,
        sub.organization_id,
        sub.inbox_ids,
        sub.event_types,
        sub.hidden,
        limit,
    )


async def position_after(ctx: Context, after: str | None) -> int:
    """The log position of the event id ``after``; the start of the log when there is none.

    Any event id is a position, whoever's it is: ``next_after`` may name an event of another
    organisation (the caller had nothing after it). Ids are random, so this tells nobody anything.
    """
    if not after:
        return 0
    async with ctx.db.read() as conn:
        position = await event_store.position_of(conn, after)
    if position is None:
        raise BadRequest(
            f"unknown event id {after!r} in after",
            fix="Pass an event_id or next_after this server returned, or leave after out to start at the beginning.",
        )
    return position


async def live_position(ctx: Context) -> int:
    """Where a new live subscription starts: the settled end of the log now."""
    async with ctx.db.read() as conn:
        newest = await event_store.last_position(conn)
        return (await event_store.horizon(conn, max(0, newest - _START_WINDOW))).position


async def event_id_at(ctx: Context, position: int) -> str | None:
    if position == 0:
        return None
    async with ctx.db.read() as conn:
        return await event_store.event_id_at(conn, position)


@dataclass(slots=True)
class Page:
    events: list[dict[str, Any]]
    next_after: str | None  # pass it back as ``after``


async def feed(
    ctx: Context, who: Principal, sub: Subscription, after: str | None, limit: int | None, wait: float
) -> Page:
    """`GET /v0/events`: the caller's events after ``after`` in commit order; when there are
    none yet, wait up to ``wait`` seconds (at most MAX_WAIT) for the first ones to commit."""
    if limit is None:
        limit = DEFAULT_LIMIT
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    limit = min(limit, MAX_LIMIT)
    wait = min(max(0.0, wait), MAX_WAIT)
    position = start = await position_after(ctx, after)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # Subscribed before the first read: a commit between a read and the wait still wakes us.
    waiter = ctx.bus.subscribe()
    try:
        while True:
            waiter.clear()
            batch = await read(ctx, sub, position, limit)
            position = batch.position
            remaining = deadline - loop.time()
            if batch.bodies or remaining <= 0:
                break
            if batch.more:
                continue  # a full page of events the caller does not see: read on
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), min(remaining, HELD_RECHECK) if batch.held else remaining)
    finally:
        ctx.bus.unsubscribe(waiter)
    if batch.bodies:
        return Page(batch.bodies, str(batch.bodies[-1]["event_id"]))
    if position == start:
        return Page([], after or None)
    # Nothing for this caller, but the log moved on: the next poll starts past what was read.
    return Page([], await event_id_at(ctx, position))
