"""/v0/inboxes/{inbox_id}/drafts (CRUD, attachments, send, approve, reject) and /v0/drafts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from agentpost import schemas
from agentpost.api.deps import Ctx, Q, Who
from agentpost.service import drafts

router = APIRouter(tags=["drafts"])
PREFIX = "/v0/inboxes/{inbox_id}/drafts"
# The SDK sends one; a draft is sent at most once anyway (the draft id is the send's key).
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.get(PREFIX, response_model=schemas.ListDrafts, response_model_exclude_none=True)
async def list_drafts(ctx: Ctx, who: Who, inbox_id: str, q: Q) -> schemas.ListDrafts:
    return await drafts.list_(ctx, who, inbox_id, q)


@router.get("/v0/drafts", response_model=schemas.ListDrafts, response_model_exclude_none=True)
async def list_org_drafts(ctx: Ctx, who: Who, q: Q) -> schemas.ListDrafts:
    return await drafts.list_(ctx, who, None, q)


@router.get("/v0/drafts/{draft_id}", response_model=schemas.Draft, response_model_exclude_none=True)
async def get_org_draft(ctx: Ctx, who: Who, draft_id: str) -> schemas.Draft:
    return await drafts.get(ctx, who, None, draft_id)


@router.get(
    "/v0/drafts/{draft_id}/attachments/{attachment_id}",
    response_model=schemas.AttachmentResponse,
    response_model_exclude_none=True,
)
async def get_org_draft_attachment(ctx: Ctx, who: Who, draft_id: str, attachment_id: str) -> schemas.AttachmentResponse:
    return await drafts.attachment(ctx, who, None, draft_id, attachment_id)


@router.post(PREFIX, response_model=schemas.Draft, response_model_exclude_none=True)
async def create_draft(ctx: Ctx, who: Who, inbox_id: str, body: schemas.CreateDraft) -> schemas.Draft:
    return await drafts.create(ctx, who, inbox_id, body)


@router.get(PREFIX + "/{draft_id}", response_model=schemas.Draft, response_model_exclude_none=True)
async def get_draft(ctx: Ctx, who: Who, inbox_id: str, draft_id: str) -> schemas.Draft:
    return await drafts.get(ctx, who, inbox_id, draft_id)


@router.get(
    PREFIX + "/{draft_id}/attachments/{attachment_id}",
    response_model=schemas.AttachmentResponse,
    response_model_exclude_none=True,
)
async def get_draft_attachment(
    ctx: Ctx, who: Who, inbox_id: str, draft_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    return await drafts.attachment(ctx, who, inbox_id, draft_id, attachment_id)


@router.patch(PREFIX + "/{draft_id}", response_model=schemas.Draft, response_model_exclude_none=True)
async def update_draft(ctx: Ctx, who: Who, inbox_id: str, draft_id: str, body: schemas.UpdateDraft) -> schemas.Draft:
    return await drafts.update(ctx, who, inbox_id, draft_id, body)


@router.delete(PREFIX + "/{draft_id}", status_code=204)
async def delete_draft(ctx: Ctx, who: Who, inbox_id: str, draft_id: str) -> Response:
    await drafts.delete(ctx, who, inbox_id, draft_id)
    return Response(status_code=204)


@router.post(
    PREFIX + "/{draft_id}/send",
    response_model=schemas.SendMessageResponse,
    responses={202: {"model": schemas.PendingApproval}},
)
async def send_draft(
    ctx: Ctx,
    who: Who,
    inbox_id: str,
    draft_id: str,
    body: schemas.SendDraft | None = None,
    idempotency_key: IdempotencyKey = None,
) -> schemas.SendMessageResponse | JSONResponse:
    sent = await drafts.send(ctx, who, inbox_id, draft_id, body or schemas.SendDraft())
    if isinstance(sent, schemas.PendingApproval):  # the inbox requires approval: held, not sent
        return JSONResponse(sent.model_dump(mode="json"), status_code=202)
    return sent


@router.post(PREFIX + "/{draft_id}/approve", response_model=schemas.SendMessageResponse)
async def approve_draft(ctx: Ctx, who: Who, inbox_id: str, draft_id: str) -> schemas.SendMessageResponse:
    return await drafts.approve(ctx, who, inbox_id, draft_id)


@router.post(PREFIX + "/{draft_id}/reject")
async def reject_draft(
    ctx: Ctx, who: Who, inbox_id: str, draft_id: str, body: schemas.RejectDraft | None = None
) -> dict[str, Any]:
    return await drafts.reject(ctx, who, inbox_id, draft_id, (body or schemas.RejectDraft()).reason)
