"""/mcp: the MCP Streamable HTTP endpoint, stateless, each request authenticated by its Bearer API key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings

from agentpost.errors import AgentpostError, Unauthorized
from agentpost.mcp.tools import ToolContext, build_server
from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Where the authenticated caller rides in the ASGI scope: the SDK builds its Request from this
# same scope, so a tool finds the principal of the HTTP request that carried its call.
PRINCIPAL_KEY = "agentpost.principal"


class McpEndpoint:
    """An ASGI app for one route: authenticate, then hand the request to the SDK's session manager.

    Run ``running()`` around the app's lifetime (the API app's lifespan): the session manager's
    task group lives there.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server = build_server(ctx, _principal_of_request)
        self.server.streamable_http_app(
            # Stateless: every request stands alone, so any process on the shared HTTP port (the
            # MX workers) or any node behind a balancer can answer it; no session to lose.
            stateless_http=True,
            # One JSON body per request: nothing stays open between tool calls.
            json_response=True,
            # DNS-rebinding protection guards servers that trust ambient credentials (cookies, a
            # localhost origin). Every request here carries an API key that a rebinding page cannot
            # know, and the Host is whatever name the operator publishes (public_url).
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = self.server.session_manager

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        try:
            # Header only, as on /v0: a key in a URL ends up in logs and histories.
            principal = await authenticate(self.ctx, token if scheme.lower() == "bearer" else None)
        except AgentpostError as exc:
            await _error(send, exc)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.manager.handle_request(scope, receive, send)


async def _principal_of_request(tool_ctx: ToolContext) -> Principal:
    request = tool_ctx.request_context.request
    scope = getattr(request, "scope", None) or {}
    principal = scope.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise Unauthorized("missing API key", fix="Send Authorization: Bearer <api key>.")
    return principal


async def _error(send: Send, exc: AgentpostError) -> None:
    """The /v0 error body ({name, message, fix}) before any MCP framing: the client sees an HTTP error."""
    body = {"name": exc.name, "message": exc.message, **({"fix": exc.fix} if exc.fix else {})}
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="agentpost"'))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
