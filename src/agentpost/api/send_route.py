"""The ASGI front of the busiest call, POST /v0/inboxes/{inbox_id}/messages/send, ahead of FastAPI.

FastAPI's per-request machinery (middleware stack, route matching over every route, dependency
solving, response-model validation and serialisation) cost about as much CPU as the send itself
in the outbound benchmark's profile. This front answers that one route with the same service
call, the same request model, the same authentication and the same error bodies; every other
request, and this path with any other method, goes to the FastAPI app unchanged (which also keeps
the route in the OpenAPI schema).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pydantic

from agentpost import schemas
from agentpost.api import error_bodies
from agentpost.errors import AgentpostError, RateLimited
from agentpost.service import messages
from agentpost.service.auth import authenticate
from agentpost.service.context import Context

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The inbox id is one path segment (an address: no "/"); Starlette has already %-decoded the path.
_SEND_PATH = re.compile(r"/v0/inboxes/([^/]+)/messages/send")
# Attachments are capped at 25 MiB each (service/messages.py) and travel base64-encoded: a body
# beyond this cannot be a valid send, so it is refused before being read whole.
MAX_BODY = 64 * 1024 * 1024
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class SendRoute:
    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _SEND_PATH.fullmatch(scope["path"])
            if match is not None:
                status, body, headers = await self._answer(scope, receive, match.group(1))
                await _respond(send, status, body, headers)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, inbox_id: str) -> tuple[int, dict[str, Any], list[Any]]:
        try:
            authorization = idempotency_key = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"idempotency-key":
                    idempotency_key = value.decode("latin-1")
            # Header only, as in api/deps.py: a key in a query string ends up in access logs.
            scheme, _, token = (authorization or "").partition(" ")
            who = await authenticate(self.ctx, token if scheme.lower() == "bearer" else None)
            raw = await _read_body(receive)
            if raw is None:
                return 413, error_bodies.body("PayloadTooLargeError", f"request body exceeds {MAX_BODY} bytes"), []
            try:
                request = schemas.SendMessage.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                return 400, error_bodies.for_validation(exc.errors()), []
            response = await messages.send(self.ctx, who, inbox_id, request, idempotency_key)
            # 202: held for approval (the inbox's send_requires_approval), as in api/messages.py.
            status = 202 if isinstance(response, schemas.PendingApproval) else 200
            return status, response.model_dump(mode="json"), []
        except AgentpostError as exc:
            headers = [(b"retry-after", str(exc.retry_after).encode())] if isinstance(exc, RateLimited) else []
            return exc.status, error_bodies.for_error(exc), headers
        except Exception as exc:  # the trace goes to the log; the client learns nothing about internals
            log.error("unhandled error", exc_info=exc)
            return 500, error_bodies.body("InternalError", "internal error; the server log has details"), []


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: dict[str, Any], headers: list[Any]) -> None:
    payload = _ENCODER.encode(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
