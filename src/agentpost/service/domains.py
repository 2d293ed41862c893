"""Domain use cases: add (idempotent), list, get with the DNS records to publish, delete."""

from __future__ import annotations

import asyncio
import re

from agentpost import schemas
from agentpost.errors import Conflict, Invalid, NotFound
from agentpost.mailauth import dkim
from agentpost.model import utcnow
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.store import dkim_keys as dkim_store
from agentpost.store import domains as domain_store
from agentpost.store.dkim_keys import StoredKey
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


async def ensure_dkim_keys(ctx: Context, domain_id: str, domain: str) -> list[StoredKey]:
    """The domain's active DKIM keys; a domain without any gets one RSA-2048 and one Ed25519 key.

    Key generation (RSA-2048 takes tens of milliseconds) runs off the event loop; private keys are
    sealed with the server's secret_key before they reach the store.
    """
    async with ctx.db.read() as conn:
        found = await dkim_store.active(conn, domain_id)
    if found:
        return found
    stamp = utcnow().strftime("%Y%m")
    generated = await asyncio.to_thread(
        lambda: [
            dkim.generate_key(domain, f"ap{stamp}r", dkim.RSA_SHA256),
            dkim.generate_key(domain, f"ap{stamp}e", dkim.ED25519_SHA256),
        ]
    )
    async with ctx.db.write() as conn:
        if not await dkim_store.active(conn, domain_id):  # another request may have won the race
            for key in generated:
                await dkim_store.add(
                    conn,
                    domain_id,
                    key.selector,
                    key.algorithm,
                    ctx.sealer.seal(key.private_pem.decode()),
                    key.dns_txt(),
                )
        return await dkim_store.active(conn, domain_id)


async def signer(ctx: Context, domain_id: str, domain: str, active: list[StoredKey] | None = None) -> dkim.DkimSigner:
    """A DKIM signer with every active key of the domain (RSA and Ed25519 signatures);
    ``active`` when the caller has read them already."""
    keys = active or await ensure_dkim_keys(ctx, domain_id, domain)
    # Loading a private key (RSA validation) costs milliseconds: keep one signer per key set, so
    # sends pay it once; a rotation changes the selectors and so the cache key.
    cache_key = (domain_id, domain, tuple((k.selector, k.private_enc) for k in keys))
    cached = ctx.signers.get(cache_key)
    if cached is None:
        async with ctx.signer_lock:  # a burst of first sends loads the keys once, not once per request
            cached = ctx.signers.get(cache_key)
            if cached is None:
                cached = await _load_signer(ctx, domain, keys)
                if len(ctx.signers) > 1000:
                    ctx.signers.clear()
                ctx.signers[cache_key] = cached
    return cached


async def _load_signer(ctx: Context, domain: str, keys: list[StoredKey]) -> dkim.DkimSigner:
    return await asyncio.to_thread(
        dkim.DkimSigner,
        [dkim.DkimKey(k.selector, domain, k.algorithm, ctx.sealer.unseal(k.private_enc).encode()) for k in keys],
    )


async def records(ctx: Context, domain_id: str, domain: str) -> list[schemas.VerificationRecord]:
    """What to publish: MX, SPF, one DKIM TXT per active selector, DMARC (verification: issue 4)."""
    keys = await ensure_dkim_keys(ctx, domain_id, domain)
    dkim_records = [
        schemas.VerificationRecord(
            type="TXT",
            name=f"{k.selector}._domainkey.{domain}",
            value=k.public_txt,
            status="MISSING",
            reason="not checked yet",
        )
        for k in keys
    ]
    return dkim_records + [
        schemas.VerificationRecord(
            type="MX",
            name=domain,
            value=ctx.hostname,
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
    if req.client_id:
        async with ctx.db.read() as conn:
            existing = await domain_store.by_client_id(conn, who.organization_id, req.client_id)
        if existing is not None:
            return domain_store.to_domain(existing, await records(ctx, existing.id, existing.domain)), False
    async with ctx.db.write() as conn:
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
    return domain_store.to_domain(row, await records(ctx, row.id, row.domain)), created


async def get(ctx: Context, who: Principal, domain_id: str) -> schemas.Domain:
    who.require("domain_read")
    async with ctx.db.read() as conn:
        row = await domain_store.get_row(conn, who.organization_id, domain_id)
    if row is None:
        raise NotFound("domain not found")
    return domain_store.to_domain(row, await records(ctx, row.id, row.domain))


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
    return domain_store.to_domain(updated or row, await records(ctx, row.id, row.domain))


def _txt_strings(value: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets (RFC 1035 §3.3.14)."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"( {quoted} )" if len(chunks) > 1 else quoted


def zone_file(domain: schemas.Domain) -> str:
    lines = [f"; DNS records for {domain.domain} (BIND zone file format)"]
    for r in domain.records:
        value = _txt_strings(r.value) if r.type == "TXT" else f"{r.value}."
        prio = f"{r.priority} " if r.priority is not None else ""
        lines.append(f"{r.name}.\t3600\tIN\t{r.type}\t{prio}{value}")
    return "\n".join(lines) + "\n"
