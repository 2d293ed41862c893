"""/v0/webhooks and /v0/inboxes/{inbox_id}/webhooks"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.errors import NotFound
from agentpost.service import webhooks

router = APIRouter(tags=["webhooks"])


class HeaderNames(BaseModel):
    header_names: list[str]


class UpdateHeaders(BaseModel):
    headers: dict[str, str] | None = None
    remove_headers: list[str] | None = None


@router.get("/v0/webhooks", response_model=schemas.ListWebhooks, response_model_exclude_none=True)
async def list_webhooks(
    ctx: Ctx, who: Who, limit: int | None = None, page_token: str | None = None
) -> schemas.ListWebhooks:
    return await webhooks.list_(ctx, who, limit, page_token)


@router.post("/v0/webhooks", response_model=schemas.Webhook, response_model_exclude_none=True)
async def create_webhook(ctx: Ctx, who: Who, body: schemas.CreateWebhook) -> schemas.Webhook:
    return await webhooks.create(ctx, who, body)


@router.post("/v0/inboxes/{inbox_id}/webhooks", response_model=schemas.Webhook, response_model_exclude_none=True)
async def create_inbox_webhook(ctx: Ctx, who: Who, inbox_id: str, body: schemas.CreateWebhook) -> schemas.Webhook:
    who.check_inbox(inbox_id)
    return await webhooks.create(ctx, who, body.model_copy(update={"inbox_ids": [inbox_id]}))


@router.get("/v0/inboxes/{inbox_id}/webhooks", response_model=schemas.ListWebhooks, response_model_exclude_none=True)
async def list_inbox_webhooks(ctx: Ctx, who: Who, inbox_id: str) -> schemas.ListWebhooks:
    who.check_inbox(inbox_id)
    found = await webhooks.list_(ctx, who, 1000, None)
    items = [w for w in found.webhooks if w.inbox_ids == [inbox_id.lower()]]
    return schemas.ListWebhooks(count=len(items), limit=1000, webhooks=items)


@router.get("/v0/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True)
@router.get(
    "/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True
)
async def get_webhook(ctx: Ctx, who: Who, webhook_id: str, inbox_id: str | None = None) -> schemas.Webhook:
    hook = await webhooks.get(ctx, who, webhook_id)
    if inbox_id is not None and hook.inbox_ids != [inbox_id.lower()]:
        raise NotFound("webhook not found")
    return hook


@router.patch("/v0/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True)
@router.patch(
    "/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True
)
async def update_webhook(
    ctx: Ctx, who: Who, webhook_id: str, body: schemas.UpdateWebhook, inbox_id: str | None = None
) -> schemas.Webhook:
    if inbox_id is not None:
        await get_webhook(ctx, who, webhook_id, inbox_id)
    return await webhooks.update(ctx, who, webhook_id, body)


@router.delete("/v0/webhooks/{webhook_id}", status_code=204)
@router.delete("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(ctx: Ctx, who: Who, webhook_id: str, inbox_id: str | None = None) -> Response:
    if inbox_id is not None:
        await get_webhook(ctx, who, webhook_id, inbox_id)
    await webhooks.delete(ctx, who, webhook_id)
    return Response(status_code=204)


@router.get("/v0/webhooks/{webhook_id}/headers", response_model=HeaderNames)
async def get_headers(ctx: Ctx, who: Who, webhook_id: str) -> HeaderNames:
    return HeaderNames(header_names=await webhooks.header_names(ctx, who, webhook_id))


@router.patch("/v0/webhooks/{webhook_id}/headers", response_model=HeaderNames)
async def update_headers(ctx: Ctx, who: Who, webhook_id: str, body: UpdateHeaders) -> HeaderNames:
    names = await webhooks.update_headers(ctx, who, webhook_id, body.headers, body.remove_headers)
    return HeaderNames(header_names=names)
