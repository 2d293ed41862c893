"""/mcp, loaded on first use: the MCP SDK is imported and its session manager started only when
the first MCP request arrives.

Importing the SDK costs about a second and some 20 MB in every serve process (each MX worker
serves HTTP too), for an endpoint many deployments never call; the inbound benchmark's memory
target is per deployment. The session manager's task group must be entered and left in one task,
so it runs in a task of its own, stopped by ``close()`` from the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from agentpost.service.context import Context

if TYPE_CHECKING:
    from agentpost.mcp.http import McpEndpoint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LazyMcp:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._endpoint: McpEndpoint | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoint or await self._start()
        await endpoint(scope, receive, send)

    async def _start(self) -> McpEndpoint:
        async with self._lock:
            if self._endpoint is None:
                from agentpost.mcp.http import McpEndpoint

                endpoint = McpEndpoint(self.ctx)
                ready = asyncio.Event()
                self._task = asyncio.create_task(self._run(endpoint, ready), name="mcp-session-manager")
                await ready.wait()
                if self._task.done():  # the manager failed to start: report it to this request
                    self._task.result()
                self._endpoint = endpoint
            return self._endpoint

    async def _run(self, endpoint: McpEndpoint, ready: asyncio.Event) -> None:
        try:
            async with endpoint.running():
                ready.set()
                await self._stop.wait()
        finally:
            ready.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
