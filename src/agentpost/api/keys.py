"""/v0/api-keys and /v0/auth/me"""

from __future__ import annotations

from fastapi import APIRouter, Response

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import keys

router = APIRouter(tags=["api-keys"])


@router.get("/v0/auth/me", response_model=schemas.Identity, response_model_exclude_none=True)
async def me(who: Who) -> schemas.Identity:
    return keys.me(who)


@router.get("/v0/api-keys", response_model=schemas.ListApiKeys, response_model_exclude_none=True)
async def list_keys(ctx: Ctx, who: Who) -> schemas.ListApiKeys:
    return await keys.list_(ctx, who)


@router.post("/v0/api-keys", response_model=schemas.CreateApiKeyResponse, response_model_exclude_none=True)
async def create_key(ctx: Ctx, who: Who, body: schemas.CreateApiKey | None = None) -> schemas.CreateApiKeyResponse:
    return await keys.create(ctx, who, body or schemas.CreateApiKey())


@router.get("/v0/api-keys/{api_key_id}", response_model=schemas.ApiKey, response_model_exclude_none=True)
async def get_key(ctx: Ctx, who: Who, api_key_id: str) -> schemas.ApiKey:
    return await keys.get(ctx, who, api_key_id)


@router.delete("/v0/api-keys/{api_key_id}", status_code=204)
async def delete_key(ctx: Ctx, who: Who, api_key_id: str) -> Response:
    await keys.delete(ctx, who, api_key_id)
    return Response(status_code=204)
