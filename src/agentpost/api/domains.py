"""/v0/domains"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import domains

router = APIRouter(prefix="/v0/domains", tags=["domains"])


@router.get("", response_model=schemas.ListDomains, response_model_exclude_none=True)
async def list_domains(
    ctx: Ctx, who: Who, limit: int | None = None, page_token: str | None = None
) -> schemas.ListDomains:
    return await domains.list_(ctx, who, limit, page_token)


@router.post("", response_model=schemas.Domain, response_model_exclude_none=True)
async def create_domain(ctx: Ctx, who: Who, body: schemas.CreateDomain) -> schemas.Domain:
    domain, _ = await domains.add(ctx, who, body)
    return domain


@router.get("/{domain_id}", response_model=schemas.Domain, response_model_exclude_none=True)
async def get_domain(ctx: Ctx, who: Who, domain_id: str) -> schemas.Domain:
    return await domains.get(ctx, who, domain_id)


@router.patch("/{domain_id}", response_model=schemas.Domain, response_model_exclude_none=True)
async def update_domain(ctx: Ctx, who: Who, domain_id: str, body: schemas.UpdateDomain) -> schemas.Domain:
    return await domains.update(ctx, who, domain_id, body)


@router.get("/{domain_id}/zone-file", response_class=PlainTextResponse)
async def zone_file(ctx: Ctx, who: Who, domain_id: str) -> str:
    return domains.zone_file(await domains.get(ctx, who, domain_id))


@router.delete("/{domain_id}", status_code=204)
async def delete_domain(ctx: Ctx, who: Who, domain_id: str) -> Response:
    await domains.delete(ctx, who, domain_id)
    return Response(status_code=204)
