"""`agentpost mcp`: the tool set on stdin/stdout for one API key, calling service/ in this process."""

from __future__ import annotations

from agentpost.mcp.tools import ToolContext, build_server
from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context


async def serve_stdio(ctx: Context, api_key: str) -> None:
    """Check the key (a wrong one fails before the client's handshake), then serve until stdin closes.

    ``ctx`` is the composition root's standalone context: the configured database, with local
    delivery wired (serve.standalone_context).
    """
    await authenticate(ctx, api_key)

    async def principal(_: ToolContext) -> Principal:
        # Per call, not once: a key deleted while the client runs stops working (cached 5 s).
        return await authenticate(ctx, api_key)

    await build_server(ctx, principal).run_stdio_async()
