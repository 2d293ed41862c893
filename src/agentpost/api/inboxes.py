"""/v0/inboxes"""

from __future__ import annotations

from fastapi import APIRouter, Response

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import inboxes

router = APIRouter(prefix="/v0/inboxes", tags=["inboxes"])


@router.get("", response_model=schemas.ListInboxes, response_model_exclude_none=True)
async def list_inboxes(
    ctx: Ctx, who: Who, limit: int | None = None, page_token: str | None = None
) -> schemas.ListInboxes:
    return await inboxes.list_(ctx, who, limit, page_token)


@router.post("", response_model=schemas.Inbox, response_model_exclude_none=True)
async def create_inbox(ctx: Ctx, who: Who, body: schemas.CreateInbox | None = None) -> schemas.Inbox:
    inbox, _ = await inboxes.create(ctx, who, body or schemas.CreateInbox())
    return inbox


@router.get("/{inbox_id}", response_model=schemas.Inbox, response_model_exclude_none=True)
async def get_inbox(ctx: Ctx, who: Who, inbox_id: str) -> schemas.Inbox:
    return await inboxes.get(ctx, who, inbox_id)


@router.patch("/{inbox_id}", response_model=schemas.Inbox, response_model_exclude_none=True)
async def update_inbox(ctx: Ctx, who: Who, inbox_id: str, body: schemas.UpdateInbox) -> schemas.Inbox:
    return await inboxes.update(ctx, who, inbox_id, body)


@router.delete("/{inbox_id}", status_code=204)
async def delete_inbox(ctx: Ctx, who: Who, inbox_id: str) -> Response:
    await inboxes.delete(ctx, who, inbox_id)
    return Response(status_code=204)
