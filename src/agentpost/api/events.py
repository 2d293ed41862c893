"""/v0/events (the durable feed, long-poll) and the WebSocket at /v0 (live events, AgentMail's protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from agentpost.api.deps import Ctx, Who, _values
from agentpost.errors import AgentpostError, BadRequest, Unauthorized
from agentpost.service import events
from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])


class EventPage(BaseModel):
    events: list[dict[str, Any]]
    count: int
    # Pass back as ``after``: the last event returned, or a later position when nothing matched.
    next_after: str | None = None


@router.get("/v0/events", response_model=EventPage, response_model_exclude_none=True)
async def list_events(
    ctx: Ctx,
    who: Who,
    after: str | None = None,
    limit: int | None = None,
    wait: float = 0.0,
    event_types: Annotated[list[str] | None, Query()] = None,
    inbox_ids: Annotated[list[str] | None, Query()] = None,
) -> EventPage:
    sub = events.subscription(who, _values(event_types), _values(inbox_ids))
    page = await events.feed(ctx, who, sub, after, limit, wait)
    return EventPage(events=page.events, count=len(page.events), next_after=page.next_after)


def _error(exc: AgentpostError) -> str:
    return json.dumps({"type": "error", "name": exc.name, "message": exc.message})


class _Session:
    """One WebSocket: a subscription (replaced by each ``subscribe``) and a position in the log.

    Frames are sent by one task at a time (the lock), so ``subscribed`` always precedes the
    events of the subscription it confirms.
    """

    def __init__(self, ws: WebSocket, ctx: Context, who: Principal, key: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.who = who
        self.key = key
        self.sub: events.Subscription | None = None
        self.position = 0
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()

    async def receive(self) -> None:
        """Client frames: ``subscribe`` (again at any time); anything else is answered with an error."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            try:
                frame = json.loads(message.get("text") or message.get("bytes") or b"")
                if not isinstance(frame, dict) or frame.get("type") != "subscribe":
                    raise BadRequest('expected {"type": "subscribe", "event_types": [...], "inbox_ids": [...]}')
                sub = events.subscription(self.who, _list(frame, "event_types"), _list(frame, "inbox_ids"))
                after = frame.get("after")  # agentpost: resume after an event id instead of "from now"
                if after is not None and not isinstance(after, str):
                    raise BadRequest("after must be an event id")
                position = await events.position_after(self.ctx, after) if after else None
                if position is None and self.sub is None:
                    position = await events.live_position(self.ctx)
            except ValueError:
                await self.send(_error(BadRequest("frame is not JSON")))
                continue
            except AgentpostError as exc:
                await self.send(_error(exc))
                continue
            async with self.lock:
                self.sub = sub
                if position is not None:
                    self.position = position
                # A resubscription keeps the position: nothing is skipped or repeated.
                await self.ws.send_text(json.dumps({"type": "subscribed", **sub.wire(), "pod_ids": None}))
            self.changed.set()

    async def send(self, text: str) -> None:
        async with self.lock:
            await self.ws.send_text(text)

    async def pump(self) -> None:
        """Events of the current subscription as they commit, in log order."""
        waiter = self.ctx.bus.subscribe()
        try:
            while True:
                waiter.clear()
                self.changed.clear()
                held = False
                sub = self.sub
                if sub is not None:
                    # The key may have been deleted or expired since the connection opened.
                    await authenticate(self.ctx, self.key)
                    batch = await events.read(self.ctx, sub, self.position, events.MAX_LIMIT)
                    async with self.lock:
                        if self.sub is not sub:
                            continue  # resubscribed meanwhile: read again with the new filters
                        for body in batch.bodies:
                            await self.ws.send_text(json.dumps(body, separators=(",", ":")))
                        self.position = batch.position
                    if batch.more:
                        continue
                    held = batch.held
                wake = asyncio.ensure_future(waiter.wait())
                change = asyncio.ensure_future(self.changed.wait())
                try:
                    await asyncio.wait({wake, change}, timeout=events.HELD_RECHECK if held else None,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    wake.cancel()
                    change.cancel()
        finally:
            self.ctx.bus.unsubscribe(waiter)


def _list(frame: dict[str, Any], name: str) -> list[str] | None:
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    return value


@router.websocket("/v0")
async def websocket(ws: WebSocket) -> None:
    """The agentmail SDK's ``websockets.connect()``: the key in ``Authorization: Bearer`` or, for
    clients that cannot set headers (browsers), the ``api_key`` query parameter."""
    ctx: Context = ws.app.state.ctx
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    key = token if scheme.lower() == "bearer" and token else ws.query_params.get("api_key", "")
    try:
        who = await authenticate(ctx, key)
    except Unauthorized as exc:
        # Refused in the handshake with 401, which the SDK reports as invalid credentials.
        body = {"name": exc.name, "message": exc.message}
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(body, status_code=401))
        else:
            await ws.close(code=1008, reason=exc.message)
        return
    await ws.accept()
    session = _Session(ws, ctx, who, key)
    pump = asyncio.create_task(session.pump(), name="websocket-pump")
    try:
        receive = asyncio.create_task(session.receive(), name="websocket-receive")
        done, _ = await asyncio.wait({pump, receive}, return_when=asyncio.FIRST_COMPLETED)
        receive.cancel()
        for task in done:
            error = task.exception()
            if isinstance(error, Unauthorized):
                with contextlib.suppress(Exception):
                    await ws.send_text(_error(error))
                    await ws.close(code=1008)
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                log.error("websocket session failed", exc_info=error)
                with contextlib.suppress(Exception):
                    await ws.close(code=1011)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
