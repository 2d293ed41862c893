"""Request plumbing shared by the routers: the service context and the calling principal."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request

from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context
from agentpost.service.mail import Listing


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def principal(request: Request, ctx: Annotated[Context, Depends(context)]) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = token if scheme.lower() == "bearer" else request.query_params.get("api_key")
    return await authenticate(ctx, key)


Ctx = Annotated[Context, Depends(context)]
Who = Annotated[Principal, Depends(principal)]


def listing(
    limit: int | None = None,
    page_token: str | None = None,
    labels: Annotated[list[str] | None, Query()] = None,
    before: datetime | None = None,
    after: datetime | None = None,
    ascending: bool = False,
    include_spam: bool = False,
    include_blocked: bool = False,
    include_unauthenticated: bool = False,
    include_trash: bool = False,
) -> Listing:
    return Listing(
        limit=limit,
        page_token=page_token,
        labels=labels,
        before=before,
        after=after,
        ascending=ascending,
        include_spam=include_spam,
        include_blocked=include_blocked,
        include_unauthenticated=include_unauthenticated,
        include_trash=include_trash,
    )


Q = Annotated[Listing, Depends(listing)]
