"""Domain use cases: add (idempotent), list, get with the DNS records to publish, delete."""

from __future__ import annotations

import re

from agentpost import schemas
from agentpost.errors import Conflict, Invalid, NotFound
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.store import domains as domain_store
from agentpost.store.pages import clamp_limit, decode_token, encode_token

# RFC 1035 §2.3.1 / RFC 5890: LDH labels (A-labels for IDNs), at least two labels.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(name: str) -> str:
    value = name.strip().rstrip(".").lower()
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise Invalid(f"{name!r} is not a valid domain", [{"path": "domain", "message": "invalid domain"}]) from None
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise Invalid(f"{name!r} is not a valid domain", [{"path": "domain", "message": "invalid domain"}])
    return value


def records(ctx: Context, domain: str) -> list[schemas.VerificationRecord]:
    """What to publish so mail for the domain reaches this server (verification: a later step)."""
    return [
        schemas.VerificationRecord(
            type="MX",
            name=domain,
            value=ctx.mx_host or ctx.hostname,
            priority=10,
            status="MISSING",
            reason="not checked yet",
        ),
        schemas.VerificationRecord(
            type="TXT", name=domain, value="v=spf1 mx -all", status="MISSING", reason="not checked yet"
        ),
        schemas.VerificationRecord(
            type="TXT",
            name=f"_dmarc.{domain}",
            value="v=DMARC1; p=none",
            status="MISSING",
            reason="not checked yet",
        ),
    ]


async def add(ctx: Context, who: Principal, req: schemas.CreateDomain) -> tuple[schemas.Domain, bool]:
    who.require_org()
    who.require("domain_create")
    name = normalise_domain(req.domain)
    async with ctx.db.write() as conn:
        if req.client_id:
            existing = await domain_store.by_client_id(conn, who.organization_id, req.client_id)
            if existing is not None:
                return domain_store.to_domain(existing, records(ctx, existing.domain)), False
        row, created = await domain_store.add(
            conn,
            who.organization_id,
            name,
            client_id=req.client_id,
            feedback_enabled=req.feedback_enabled if req.feedback_enabled is not None else True,
            inbound_enabled=req.inbound_enabled if req.inbound_enabled is not None else True,
        )
        if not created and row.organization_id != who.organization_id:
            raise Conflict(f"domain {name} is hosted by another organisation")
    ctx.routing_changed()
    return domain_store.to_domain(row, records(ctx, row.domain)), created


async def get(ctx: Context, who: Principal, domain_id: str) -> schemas.Domain:
    who.require("domain_read")
    async with ctx.db.read() as conn:
        row = await domain_store.get_row(conn, who.organization_id, domain_id)
    if row is None:
        raise NotFound("domain not found")
    return domain_store.to_domain(row, records(ctx, row.domain))


async def list_(ctx: Context, who: Principal, limit: int | None, page_token: str | None) -> schemas.ListDomains:
    who.require("domain_read")
    n = clamp_limit(limit)
    async with ctx.db.read() as conn:
        items = await domain_store.list_page(conn, who.organization_id, n, decode_token(page_token))
    more = len(items) > n
    items = items[:n]
    return schemas.ListDomains(
        count=len(items), limit=n, next_page_token=encode_token(items[-1].domain_id) if more else None, domains=items
    )


async def delete(ctx: Context, who: Principal, domain_id: str) -> None:
    who.require_org()
    who.require("domain_delete")
    async with ctx.db.write() as conn:
        row = await domain_store.get_row(conn, who.organization_id, domain_id)
        if row is None:
            raise NotFound("domain not found")
        await domain_store.delete(conn, row.id)
    ctx.routing_changed()


async def update(ctx: Context, who: Principal, domain_id: str, req: schemas.UpdateDomain) -> schemas.Domain:
    who.require_org()
    who.require("domain_update")
    async with ctx.db.write() as conn:
        row = await domain_store.get_row(conn, who.organization_id, domain_id)
        if row is None:
            raise NotFound("domain not found")
        values = {
            k: v
            for k, v in (("feedback_enabled", req.feedback_enabled), ("inbound_enabled", req.inbound_enabled))
            if v is not None
        }
        if values:
            await domain_store.update(conn, row.id, **values)
        updated = await domain_store.get_row(conn, who.organization_id, row.id)
    ctx.routing_changed()  # inbound_enabled decides whether the MX accepts the domain
    return domain_store.to_domain(updated or row, records(ctx, row.domain))


def zone_file(domain: schemas.Domain) -> str:
    lines = [f"; DNS records for {domain.domain} (BIND zone file format)"]
    for r in domain.records:
        value = f'"{r.value}"' if r.type == "TXT" else f"{r.value}."
        prio = f"{r.priority} " if r.priority is not None else ""
        lines.append(f"{r.name}.\t3600\tIN\t{r.type}\t{prio}{value}")
    return "\n".join(lines) + "\n"
