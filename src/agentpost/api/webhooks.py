"""/v0/webhooks and /v0/inboxes/{inbox_id}/webhooks"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import webhooks

router = APIRouter(tags=["webhooks"])


class HeaderNames(BaseModel):
    header_names: list[str]


class UpdateHeaders(BaseModel):
    headers: dict[str, str] | None = None
    remove_headers: list[str] | None = None


class CreateInboxWebhook(schemas.Request):
    """The inbox comes from the path, so ``inbox_ids`` and ``pod_ids`` are not accepted."""

    url: str
    event_types: list[str]
    client_id: str | None = None
    headers: dict[str, str] | None = None


@router.get("/v0/webhooks", response_model=schemas.ListWebhooks, response_model_exclude_none=True)
async def list_webhooks(
    ctx: Ctx, who: Who, limit: int | None = None, page_token: str | None = None
) -> schemas.ListWebhooks:
    return await webhooks.list_(ctx, who, limit, page_token)


@router.post("/v0/webhooks", response_model=schemas.Webhook, response_model_exclude_none=True)
async def create_webhook(ctx: Ctx, who: Who, body: schemas.CreateWebhook) -> schemas.Webhook:
    return await webhooks.create(ctx, who, body)


@router.post("/v0/inboxes/{inbox_id}/webhooks", response_model=schemas.Webhook, response_model_exclude_none=True)
async def create_inbox_webhook(ctx: Ctx, who: Who, inbox_id: str, body: CreateInboxWebhook) -> schemas.Webhook:
    request = schemas.CreateWebhook(**body.model_dump())
    return await webhooks.create(ctx, who, request, inbox_id=inbox_id)


@router.get("/v0/inboxes/{inbox_id}/webhooks", response_model=schemas.ListWebhooks, response_model_exclude_none=True)
async def list_inbox_webhooks(ctx: Ctx, who: Who, inbox_id: str) -> schemas.ListWebhooks:
    who.check_inbox(inbox_id)
    found = await webhooks.list_(ctx, who, 1000, None)
    inbox = inbox_id.lower()
    items = [w for w in found.webhooks if w.inbox_id == inbox or (w.inbox_id is None and w.inbox_ids == [inbox])]
    return schemas.ListWebhooks(count=len(items), limit=1000, webhooks=items)


@router.get("/v0/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True)
@router.get(
    "/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True
)
async def get_webhook(ctx: Ctx, who: Who, webhook_id: str, inbox_id: str | None = None) -> schemas.Webhook:
    return await webhooks.get(ctx, who, webhook_id, inbox_id)


@router.patch("/v0/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True)
@router.patch(
    "/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", response_model=schemas.Webhook, response_model_exclude_none=True
)
async def update_webhook(
    ctx: Ctx, who: Who, webhook_id: str, body: schemas.UpdateWebhook, inbox_id: str | None = None
) -> schemas.Webhook:
    return await webhooks.update(ctx, who, webhook_id, body, inbox_id)


@router.delete("/v0/webhooks/{webhook_id}", status_code=204)
@router.delete("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(ctx: Ctx, who: Who, webhook_id: str, inbox_id: str | None = None) -> Response:
    await webhooks.delete(ctx, who, webhook_id, inbox_id)
    return Response(status_code=204)


@router.get("/v0/webhooks/{webhook_id}/headers", response_model=HeaderNames)
@router.get("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}/headers", response_model=HeaderNames)
async def get_headers(ctx: Ctx, who: Who, webhook_id: str, inbox_id: str | None = None) -> HeaderNames:
    return HeaderNames(header_names=await webhooks.header_names(ctx, who, webhook_id, inbox_id))


@router.patch("/v0/webhooks/{webhook_id}/headers", response_model=HeaderNames)
@router.patch("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}/headers", response_model=HeaderNames)
async def update_headers(
    ctx: Ctx, who: Who, webhook_id: str, body: UpdateHeaders, inbox_id: str | None = None
) -> HeaderNames:
    names = await webhooks.update_headers(ctx, who, webhook_id, body.headers, body.remove_headers, inbox_id)
    return HeaderNames(header_names=names)


@router.post("/v0/webhooks/{webhook_id}/replay", response_model=schemas.WebhookReplay)
@router.post("/v0/inboxes/{inbox_id}/webhooks/{webhook_id}/replay", response_model=schemas.WebhookReplay)
async def replay_webhook(
    ctx: Ctx, who: Who, webhook_id: str, body: schemas.ReplayWebhook, inbox_id: str | None = None
) -> schemas.WebhookReplay:
    """Deliver again, with their original event ids, the events of [after, before) it subscribes to."""
    return await webhooks.replay(ctx, who, webhook_id, body, inbox_id)
