"""/v0/inboxes/{inbox_id}/messages and the signed downloads they point to."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from agentpost import schemas
from agentpost.api.deps import Ctx, Q, Who
from agentpost.service import mail, messages, search

router = APIRouter(tags=["messages"])
PREFIX = "/v0/inboxes/{inbox_id}/messages"
# Message-IDs may contain "/" (RFC 5322 §3.6.4 allows it): routes take the rest of the path,
# the more specific suffixes (/raw, /attachments/...) first.


@router.get(PREFIX, response_model=schemas.ListMessages, response_model_exclude_none=True)
async def list_messages(ctx: Ctx, who: Who, inbox_id: str, q: Q) -> schemas.ListMessages:
    return await mail.list_messages(ctx, who, inbox_id, q)


@router.post(PREFIX + "/batch-get", response_model=schemas.BatchGetMessagesResponse, response_model_exclude_none=True)
async def batch_get(
    ctx: Ctx, who: Who, inbox_id: str, body: schemas.BatchGetMessages
) -> schemas.BatchGetMessagesResponse:
    return await mail.batch_get(ctx, who, inbox_id, body.message_ids)


@router.post(
    PREFIX + "/batch-update", response_model=schemas.BatchUpdateMessagesResponse, response_model_exclude_none=True
)
async def batch_update(
    ctx: Ctx, who: Who, inbox_id: str, body: schemas.BatchUpdateMessages
) -> schemas.BatchUpdateMessagesResponse:
    return await mail.batch_update(ctx, who, inbox_id, body)


@router.get(PREFIX + "/search", response_model=schemas.SearchMessagesResponse, response_model_exclude_none=True)
async def search_messages(
    ctx: Ctx, who: Who, inbox_id: str, q: Annotated[str, Query()], listing: Q
) -> schemas.SearchMessagesResponse:
    # Declared before GET {message_id:path}, which would otherwise take "search" as an id.
    return await search.search_messages(ctx, who, inbox_id, listing, q)


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
# A send held for approval (the inbox's send_requires_approval) is accepted, not sent.
HELD: dict[int | str, dict[str, Any]] = {202: {"model": schemas.PendingApproval}}


def _answer(sent: messages.Sent) -> schemas.SendMessageResponse | JSONResponse:
    if isinstance(sent, schemas.PendingApproval):
        return JSONResponse(sent.model_dump(mode="json"), status_code=202)
    return sent


@router.post(PREFIX + "/send", response_model=schemas.SendMessageResponse, responses=HELD)
async def send_message(
    ctx: Ctx, who: Who, inbox_id: str, body: schemas.SendMessage, idempotency_key: IdempotencyKey = None
) -> schemas.SendMessageResponse | JSONResponse:
    return _answer(await messages.send(ctx, who, inbox_id, body, idempotency_key))


@router.post(PREFIX + "/{message_id:path}/reply-all", response_model=schemas.SendMessageResponse, responses=HELD)
async def reply_all(
    ctx: Ctx,
    who: Who,
    inbox_id: str,
    message_id: str,
    body: schemas.ReplyMessage,
    idempotency_key: IdempotencyKey = None,
) -> schemas.SendMessageResponse | JSONResponse:
    return _answer(await messages.reply(ctx, who, inbox_id, message_id, body, True, idempotency_key))


@router.post(PREFIX + "/{message_id:path}/reply", response_model=schemas.SendMessageResponse, responses=HELD)
async def reply(
    ctx: Ctx,
    who: Who,
    inbox_id: str,
    message_id: str,
    body: schemas.ReplyMessage,
    idempotency_key: IdempotencyKey = None,
) -> schemas.SendMessageResponse | JSONResponse:
    return _answer(await messages.reply(ctx, who, inbox_id, message_id, body, False, idempotency_key))


@router.post(PREFIX + "/{message_id:path}/forward", response_model=schemas.SendMessageResponse, responses=HELD)
async def forward(
    ctx: Ctx,
    who: Who,
    inbox_id: str,
    message_id: str,
    body: schemas.SendMessage,
    idempotency_key: IdempotencyKey = None,
) -> schemas.SendMessageResponse | JSONResponse:
    return _answer(await messages.forward(ctx, who, inbox_id, message_id, body, idempotency_key))


@router.get(PREFIX + "/{message_id:path}/deliveries")
async def deliveries(ctx: Ctx, who: Who, inbox_id: str, message_id: str) -> dict[str, Any]:
    return await messages.deliveries(ctx, who, inbox_id, message_id)


class AddSuppression(BaseModel):
    address: str
    inbox_id: str | None = None


@router.get("/v0/suppressions", tags=["suppressions"])
async def list_suppressions(ctx: Ctx, who: Who) -> dict[str, Any]:
    return await messages.list_suppressions(ctx, who)


@router.post("/v0/suppressions", tags=["suppressions"])
async def add_suppression(ctx: Ctx, who: Who, body: AddSuppression) -> dict[str, Any]:
    return await messages.add_suppression(ctx, who, body.address, body.inbox_id)


@router.get("/v0/suppressions/{address}", tags=["suppressions"])
async def get_suppression(ctx: Ctx, who: Who, address: str) -> dict[str, Any]:
    return await messages.get_suppression(ctx, who, address)


@router.delete("/v0/suppressions/{address}", status_code=204, tags=["suppressions"])
async def remove_suppression(ctx: Ctx, who: Who, address: str) -> Response:
    await messages.remove_suppression(ctx, who, address)
    return Response(status_code=204)


@router.get(PREFIX + "/{message_id:path}/raw", response_model=schemas.RawMessage)
async def raw_message(ctx: Ctx, who: Who, inbox_id: str, message_id: str) -> schemas.RawMessage:
    return await mail.raw_download(ctx, who, inbox_id, message_id)


@router.get(
    PREFIX + "/{message_id:path}/attachments/{attachment_id}",
    response_model=schemas.AttachmentResponse,
    response_model_exclude_none=True,
)
async def get_attachment(
    ctx: Ctx, who: Who, inbox_id: str, message_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    return await mail.attachment(ctx, who, inbox_id, message_id, attachment_id)


@router.get(PREFIX + "/{message_id:path}", response_model=schemas.Message, response_model_exclude_none=True)
async def get_message(ctx: Ctx, who: Who, inbox_id: str, message_id: str) -> schemas.Message:
    return await mail.get_message(ctx, who, inbox_id, message_id)


@router.patch(PREFIX + "/{message_id:path}", response_model=schemas.UpdateMessageResponse)
async def update_message(
    ctx: Ctx, who: Who, inbox_id: str, message_id: str, body: schemas.UpdateLabels
) -> schemas.UpdateMessageResponse:
    return await mail.update_labels(ctx, who, inbox_id, message_id, body)


@router.get("/v0/downloads/{token}", include_in_schema=False)
async def download(ctx: Ctx, token: str) -> Response:
    # The token is the credential (signed, expiring): links work in a browser or curl as is.
    data, content_type, filename = await mail.download(ctx, token)
    headers = {"x-content-type-options": "nosniff", "cache-control": "private, max-age=300"}
    if filename:
        headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
    else:
        headers["content-disposition"] = "attachment"
    return Response(content=data, media_type=content_type, headers=headers)
