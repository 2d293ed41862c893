"""/v0/lists/{direction}/{type} and /v0/inboxes/{inbox_id}/lists/{direction}/{type}: allow and block lists."""

from __future__ import annotations

from fastapi import APIRouter, Response

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import guardrails

router = APIRouter(tags=["lists"])

_ORG = "/v0/lists/{direction}/{list_type}"
_INBOX = "/v0/inboxes/{inbox_id}/lists/{direction}/{list_type}"


@router.get(_ORG, response_model=schemas.ListListEntries, response_model_exclude_none=True)
async def list_entries(
    ctx: Ctx, who: Who, direction: str, list_type: str, limit: int | None = None, page_token: str | None = None
) -> schemas.ListListEntries:
    return await guardrails.list_entries(ctx, who, None, direction, list_type, limit, page_token)


@router.post(_ORG, response_model=schemas.ListEntry, response_model_exclude_none=True)
async def create_entry(
    ctx: Ctx, who: Who, direction: str, list_type: str, body: schemas.CreateListEntry
) -> schemas.ListEntry:
    return await guardrails.create_entry(ctx, who, None, direction, list_type, body)


@router.get(_ORG + "/{entry}", response_model=schemas.ListEntry, response_model_exclude_none=True)
async def get_entry(ctx: Ctx, who: Who, direction: str, list_type: str, entry: str) -> schemas.ListEntry:
    return await guardrails.get_entry(ctx, who, None, direction, list_type, entry)


@router.delete(_ORG + "/{entry}", status_code=204)
async def delete_entry(ctx: Ctx, who: Who, direction: str, list_type: str, entry: str) -> Response:
    await guardrails.delete_entry(ctx, who, None, direction, list_type, entry)
    return Response(status_code=204)


@router.get(_INBOX, response_model=schemas.ListListEntries, response_model_exclude_none=True)
async def list_inbox_entries(
    ctx: Ctx,
    who: Who,
    inbox_id: str,
    direction: str,
    list_type: str,
    limit: int | None = None,
    page_token: str | None = None,
) -> schemas.ListListEntries:
    return await guardrails.list_entries(ctx, who, inbox_id, direction, list_type, limit, page_token)


@router.post(_INBOX, response_model=schemas.ListEntry, response_model_exclude_none=True)
async def create_inbox_entry(
    ctx: Ctx, who: Who, inbox_id: str, direction: str, list_type: str, body: schemas.CreateListEntry
) -> schemas.ListEntry:
    return await guardrails.create_entry(ctx, who, inbox_id, direction, list_type, body)


@router.get(_INBOX + "/{entry}", response_model=schemas.ListEntry, response_model_exclude_none=True)
async def get_inbox_entry(
    ctx: Ctx, who: Who, inbox_id: str, direction: str, list_type: str, entry: str
) -> schemas.ListEntry:
    return await guardrails.get_entry(ctx, who, inbox_id, direction, list_type, entry)


@router.delete(_INBOX + "/{entry}", status_code=204)
async def delete_inbox_entry(ctx: Ctx, who: Who, inbox_id: str, direction: str, list_type: str, entry: str) -> Response:
    await guardrails.delete_entry(ctx, who, inbox_id, direction, list_type, entry)
    return Response(status_code=204)
