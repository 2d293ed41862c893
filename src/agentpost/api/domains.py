"""/v0/domains, and the MTA-STS policy of each hosted domain at /.well-known/mta-sts.txt."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from agentpost import schemas
from agentpost.api.deps import Ctx, Who
from agentpost.service import domains

api = APIRouter(prefix="/v0/domains", tags=["domains"])
well_known = APIRouter(include_in_schema=False)
router = APIRouter()

DMARC_GUIDANCE = (
    "DMARC starts at p=none (monitoring): receivers send aggregate reports to dmarc-reports@<domain> and "
    "apply no policy. Once the reports show your mail passing SPF or DKIM aligned with the From domain, "
    "move to p=quarantine, then to p=reject (RFC 9989 has no pct=: change p= itself). See docs/dns.md."
)


@api.get("", response_model=schemas.ListDomains, response_model_exclude_none=True)
async def list_domains(
    ctx: Ctx, who: Who, limit: int | None = None, page_token: str | None = None
) -> schemas.ListDomains:
    return await domains.list_(ctx, who, limit, page_token)


@api.post("", response_model=schemas.Domain, response_model_exclude_none=True)
async def create_domain(ctx: Ctx, who: Who, body: schemas.CreateDomain) -> schemas.Domain:
    """Host a domain; the response lists the DNS records to publish.

    Use a dedicated subdomain for agent mail (e.g. `agents.example.com`): the agents' sending
    reputation and DMARC policy then stay apart from the people's mail of `example.com`.
    """
    domain, _ = await domains.add(ctx, who, body)
    return domain


@api.get("/{domain_id}", response_model=schemas.Domain, response_model_exclude_none=True)
async def get_domain(ctx: Ctx, who: Who, domain_id: str) -> schemas.Domain:
    return await domains.get(ctx, who, domain_id)


@api.patch("/{domain_id}", response_model=schemas.Domain, response_model_exclude_none=True)
async def update_domain(ctx: Ctx, who: Who, domain_id: str, body: schemas.UpdateDomain) -> schemas.Domain:
    return await domains.update(ctx, who, domain_id, body)


@api.get("/{domain_id}/zone-file", response_class=PlainTextResponse)
async def zone_file(ctx: Ctx, who: Who, domain_id: str) -> str:
    """The records to publish in BIND zone file format (long TXT values split in 255-octet strings)."""
    return domains.zone_file(await domains.get(ctx, who, domain_id))


@api.post(
    "/{domain_id}/verify",
    response_model=schemas.Domain,
    response_model_exclude_none=True,
    description="Look the domain's records up through the server's resolver and update each record's status "
    "(VALID, INVALID, MISSING, or UNKNOWN when the lookup failed) with a reason. The domain becomes VERIFIED "
    "when MX, SPF, DKIM and DMARC are right (a domain.verified event). " + DMARC_GUIDANCE,
)
async def verify_domain(ctx: Ctx, who: Who, domain_id: str) -> schemas.Domain:
    return await domains.verify(ctx, who, domain_id)


@api.post(
    "/{domain_id}/rotate-dkim",
    response_model=schemas.Domain,
    response_model_exclude_none=True,
    description="Start a DKIM key rotation: a new RSA-2048 and Ed25519 key under new selectors, listed among the "
    "records to publish. Signing switches to them once their TXT records are seen in DNS (the periodic re-check "
    "or a verify call looks); the old selectors stay listed for the grace period (default 7 days), so mail "
    "signed with them still verifies, then are flagged REMOVE. While a rotation waits for its records, calling "
    "this again changes nothing.",
)
async def rotate_dkim(ctx: Ctx, who: Who, domain_id: str) -> schemas.Domain:
    return await domains.rotate(ctx, who, domain_id)


@api.delete("/{domain_id}", status_code=204)
async def delete_domain(ctx: Ctx, who: Who, domain_id: str) -> Response:
    await domains.delete(ctx, who, domain_id)
    return Response(status_code=204)


@well_known.get("/.well-known/mta-sts.txt", response_class=PlainTextResponse)
async def mta_sts_policy(ctx: Ctx, request: Request) -> str:
    # RFC 8461 §3.3: fetched from https://mta-sts.<domain>/; the Host header names the domain.
    return await domains.mta_sts_policy(ctx, request.headers.get("host", ""))


router.include_router(api)
router.include_router(well_known)
