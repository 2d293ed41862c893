"""Request plumbing shared by the routers: the service context and the calling principal."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request

from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context
from agentpost.service.mail import Listing


async def context(request: Request) -> Context:
    # async: FastAPI runs a plain def dependency in a worker thread, one hop per request.
    ctx: Context = request.app.state.ctx
    return ctx


async def principal(request: Request, ctx: Annotated[Context, Depends(context)]) -> Principal:
    # Header only: a key in a query string ends up in access logs and browser history.
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return await authenticate(ctx, token if scheme.lower() == "bearer" else None)


Ctx = Annotated[Context, Depends(context)]
Who = Annotated[Principal, Depends(principal)]


def _values(raw: list[str] | None) -> list[str] | None:
    """Repeated query values (?labels=a&labels=b) or one JSON array (?labels=["a","b"]), which is
    how the agentmail SDK sends list filters."""
    if raw is None:
        return None
    out: list[str] = []
    for value in raw:
        if value.startswith("[") and value.endswith("]"):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                out.extend(str(v) for v in parsed)
                continue
        out.append(value)
    return out


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
    from_: Annotated[list[str] | None, Query(alias="from")] = None,
    to: Annotated[list[str] | None, Query()] = None,
    subject: Annotated[list[str] | None, Query()] = None,
) -> Listing:
    return Listing(
        limit=limit,
        page_token=page_token,
        labels=_values(labels),
        before=before,
        after=after,
        ascending=ascending,
        include_spam=include_spam,
        include_blocked=include_blocked,
        include_unauthenticated=include_unauthenticated,
        include_trash=include_trash,
        header_from=_values(from_),
        to=_values(to),
        subject=_values(subject),
    )


Q = Annotated[Listing, Depends(listing)]
