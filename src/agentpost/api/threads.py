"""/v0/threads and /v0/inboxes/{inbox_id}/threads: list, search, get, labels, delete, attachments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentpost import schemas
from agentpost.api.deps import Ctx, Q, Who
from agentpost.service import mail, search

router = APIRouter(tags=["threads"])


@router.get("/v0/threads", response_model=schemas.ListThreads, response_model_exclude_none=True)
async def list_all(ctx: Ctx, who: Who, q: Q) -> schemas.ListThreads:
    return await mail.list_threads(ctx, who, None, q)


@router.get("/v0/inboxes/{inbox_id}/threads", response_model=schemas.ListThreads, response_model_exclude_none=True)
async def list_inbox(ctx: Ctx, who: Who, inbox_id: str, q: Q) -> schemas.ListThreads:
    return await mail.list_threads(ctx, who, inbox_id, q)


@router.get(
    "/v0/inboxes/{inbox_id}/threads/search",
    response_model=schemas.SearchThreadsResponse,
    response_model_exclude_none=True,
)
async def search_inbox(
    ctx: Ctx, who: Who, inbox_id: str, q: Annotated[str, Query()], listing: Q
) -> schemas.SearchThreadsResponse:
    # Declared before GET .../threads/{thread_id}, which would otherwise take "search" as an id.
    return await search.search_threads(ctx, who, inbox_id, listing, q)


@router.get("/v0/threads/{thread_id}", response_model=schemas.Thread, response_model_exclude_none=True)
async def get_any(ctx: Ctx, who: Who, thread_id: str, q: Q) -> schemas.Thread:
    return await mail.get_thread(ctx, who, None, thread_id, q)


@router.get(
    "/v0/inboxes/{inbox_id}/threads/{thread_id}", response_model=schemas.Thread, response_model_exclude_none=True
)
async def get_inbox(ctx: Ctx, who: Who, inbox_id: str, thread_id: str, q: Q) -> schemas.Thread:
    return await mail.get_thread(ctx, who, inbox_id, thread_id, q)


@router.patch("/v0/threads/{thread_id}", response_model=schemas.UpdateThreadResponse)
async def update_any(ctx: Ctx, who: Who, thread_id: str, body: schemas.UpdateLabels) -> schemas.UpdateThreadResponse:
    return await mail.update_thread_labels(ctx, who, None, thread_id, body)


@router.patch("/v0/inboxes/{inbox_id}/threads/{thread_id}", response_model=schemas.UpdateThreadResponse)
async def update_inbox(
    ctx: Ctx, who: Who, inbox_id: str, thread_id: str, body: schemas.UpdateLabels
) -> schemas.UpdateThreadResponse:
    return await mail.update_thread_labels(ctx, who, inbox_id, thread_id, body)


@router.delete("/v0/threads/{thread_id}", status_code=204)
async def delete_any(ctx: Ctx, who: Who, thread_id: str) -> Response:
    await mail.delete_thread(ctx, who, None, thread_id)
    return Response(status_code=204)


@router.delete("/v0/inboxes/{inbox_id}/threads/{thread_id}", status_code=204)
async def delete_inbox(ctx: Ctx, who: Who, inbox_id: str, thread_id: str) -> Response:
    await mail.delete_thread(ctx, who, inbox_id, thread_id)
    return Response(status_code=204)


@router.get(
    "/v0/threads/{thread_id}/attachments/{attachment_id}",
    response_model=schemas.AttachmentResponse,
    response_model_exclude_none=True,
)
async def attachment_any(ctx: Ctx, who: Who, thread_id: str, attachment_id: str) -> schemas.AttachmentResponse:
    return await mail.thread_attachment(ctx, who, None, thread_id, attachment_id)


@router.get(
    "/v0/inboxes/{inbox_id}/threads/{thread_id}/attachments/{attachment_id}",
    response_model=schemas.AttachmentResponse,
    response_model_exclude_none=True,
)
async def attachment_inbox(
    ctx: Ctx, who: Who, inbox_id: str, thread_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    return await mail.thread_attachment(ctx, who, inbox_id, thread_id, attachment_id)
