"""The FastAPI application: routers, and the one place where errors become JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from agentpost.api import (
    domains,
    drafts,
    error_bodies,
    events,
    inboxes,
    keys,
    lists,
    messages,
    threads,
    unsubscribe,
    webhooks,
)
from agentpost.api.mcp_route import LazyMcp
from agentpost.errors import AgentpostError, RateLimited
from agentpost.service.context import Context

log = logging.getLogger(__name__)


def _error(status: int, name: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_bodies.body(name, message, **extra), status_code=status)


def create_app(ctx: Context) -> FastAPI:
    # MCP over Streamable HTTP at /mcp (mcp/http.py), loaded on its first request; its session
    # manager stops with the app.
    mcp = LazyMcp(ctx)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await mcp.close()

    app = FastAPI(
        title="agentpost",
        version="0.1.0",
        description="Email inboxes for AI agents (AgentMail v0 compatible).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    for module in (inboxes, messages, threads, drafts, domains, webhooks, keys, unsubscribe, events, lists):
        app.include_router(module.router)
    # A plain route, not a mount: a mount answers "/mcp" with a redirect to "/mcp/".
    app.router.routes.append(Route("/mcp", mcp, include_in_schema=False))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(AgentpostError)
    async def agentpost_error(_: Request, exc: AgentpostError) -> JSONResponse:
        response = JSONResponse(error_bodies.for_error(exc), status_code=exc.status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_bodies.for_validation(exc.errors()), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "NotFoundError", 405: "MethodNotAllowedError"}
        return _error(exc.status_code, names.get(exc.status_code, "HTTPError"), str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log; the client learns nothing about internals.
        log.error("unhandled error", exc_info=exc)
        return _error(500, "InternalError", "internal error; the server log has details")

    return app
