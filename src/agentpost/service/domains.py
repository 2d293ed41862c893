"""Domain use cases: add (idempotent), list, get with the DNS records to publish, verify them, delete,
and DKIM key rotation."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from typing import Any

from agentpost import schemas
from agentpost.errors import BadRequest, Conflict, Invalid, NotFound
from agentpost.mailauth import dkim
from agentpost.model import utcnow
from agentpost.service import dnscheck
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.store import dkim_keys as dkim_store
from agentpost.store import domains as domain_store
from agentpost.store import events as event_store
from agentpost.store.dkim_keys import ACTIVE, PENDING, RETIRED, RETIRING, KeyState, StoredKey
from agentpost.store.pages import clamp_limit, decode_token, encode_token

log = logging.getLogger(__name__)

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


def dns_setup(ctx: Context) -> dnscheck.DnsSetup:
    return ctx.dns_setup or dnscheck.DnsSetup(hostname=ctx.hostname)


async def expected(ctx: Context, domain_id: str, domain: str) -> list[dnscheck.Expected]:
    """What to publish: MX, SPF, one DKIM TXT per active selector (and per selector of a rotation),
    DMARC, MTA-STS, TLS-RPT, BIMI, PTR."""
    keys = await ensure_dkim_keys(ctx, domain_id, domain)
    async with ctx.db.read() as conn:
        states = await dkim_store.states(conn, domain_id)
    rotating = _rotating(states, timedelta(seconds=ctx.dkim_grace_period))
    return dnscheck.expected(domain, [(k.selector, k.public_txt) for k in keys], dns_setup(ctx), rotating)


# A retired key's record is listed (to remove) for this long after the key retired.
RETIRED_LISTED = timedelta(days=30)


def _rotating(states: list[KeyState], grace: timedelta) -> list[tuple[dnscheck.Kind, str, str, str]]:
    now = utcnow()
    rotating: list[tuple[dnscheck.Kind, str, str, str]] = []
    for k in states:
        if k.status == PENDING:
            note = "next key: signing switches to it once this record is seen in DNS"
            rotating.append(("dkim_next", k.selector, k.public_txt, note))
        elif k.status == RETIRING and k.retiring_at is not None:
            until = f"{k.retiring_at + grace:%Y-%m-%d %H:%M} UTC"
            note = f"previous key, no longer signing: keep it until {until} so mail signed with it verifies"
            rotating.append(("dkim_old", k.selector, k.public_txt, note))
        elif k.status == RETIRED and k.retired_at is not None and k.retired_at > now - RETIRED_LISTED:
            note = f"retired on {k.retired_at:%Y-%m-%d}: delete this record"
            rotating.append(("dkim_retired", k.selector, k.public_txt, note))
    return rotating


NOT_CHECKED = "not checked yet: POST /v0/domains/{domain_id}/verify or `agentpost domain verify`"


async def records(ctx: Context, row: Any) -> list[schemas.VerificationRecord]:
    """The records to publish, each with the status the last check found for it."""
    return _with_status(await expected(ctx, row.id, row.domain), row.dns_check, row.id)


def _with_status(
    wanted: list[dnscheck.Expected], check: list[dict[str, Any]] | None, domain_id: str
) -> list[schemas.VerificationRecord]:
    # A record whose expected value changed since the check (a new DKIM key, another sending
    # address) counts as not checked.
    checked = {(c["type"], c["name"], c["value"]): c for c in check or []}
    result = []
    for e in wanted:
        found = checked.get((e.type, e.name, e.value))
        if e.kind == "dkim_retired" and (found is None or found["status"] != "REMOVE"):
            found = {"status": "REMOVE", "reason": "delete the record"}  # not checked since it retired
        reason = found["reason"] if found else NOT_CHECKED.format(domain_id=domain_id)
        result.append(
            schemas.VerificationRecord(
                type=e.type,
                name=e.name,
                value=e.value,
                priority=e.priority,
                status=found["status"] if found else "MISSING",
                reason=f"{e.note}; {reason}" if e.note else reason,
            )
        )
    return result


async def _domain_row(ctx: Context, who: Principal, domain_id: str) -> Any:
    """The organisation's domain row by id or name, or NotFound."""
    async with ctx.db.read() as conn:
        row = await domain_store.get_row(conn, who.organization_id, domain_id)
    if row is None:
        raise NotFound("domain not found")
    return row


async def verify(ctx: Context, who: Principal, domain_id: str) -> schemas.Domain:
    """Look the domain's records up through the configured resolver and record what was found."""
    who.require_org()
    who.require("domain_update")
    row = await _domain_row(ctx, who, domain_id)
    return await check(ctx, row)


async def check(ctx: Context, row: Any) -> schemas.Domain:
    """Check one domain's records (an owner's verify, or the periodic re-check) and store the outcome.

    The first time the domain becomes VERIFIED a domain.verified event is written with it; a verified
    domain whose records broke turns INVALID, with the reason.
    """
    if ctx.resolver is None:
        raise BadRequest("no DNS resolver is configured on this server")
    await advance_rotation(ctx, row.id, row.domain)
    setup = dns_setup(ctx)
    wanted = await expected(ctx, row.id, row.domain)
    findings = await dnscheck.check(ctx.resolver, row.domain, wanted, setup)
    snapshot = [
        {"type": e.type, "name": e.name, "value": e.value, "status": f.status, "reason": f.reason}
        for e, f in zip(wanted, findings, strict=True)
    ]
    now = utcnow()
    async with ctx.db.write() as conn:
        current = await domain_store.lock_row(conn, row.id)
        if current is None:
            raise NotFound("domain not found")
        status, reason = dnscheck.verdict(wanted, findings, current.status)
        became_verified = status == "VERIFIED" and current.status != "VERIFIED"
        await domain_store.save_check(
            conn, row.id, status, reason, snapshot, now, verified_at=now if became_verified else None
        )
        updated = await domain_store.get_row(conn, row.organization_id, row.id)
        assert updated is not None
        domain = domain_store.to_domain(updated, _with_status(wanted, snapshot, row.id))
        if became_verified:
            payload = {"domain": domain.model_dump(mode="json", exclude_none=True)}
            await event_store.append(conn, row.organization_id, None, "domain.verified", payload)
    if became_verified:
        ctx.bus.published()
        log.info("domain %s verified", row.domain)
    elif current.status == "VERIFIED" and status != "VERIFIED":
        log.warning("domain %s: its DNS records broke: %s", row.domain, reason)
    return domain


async def recheck_due(ctx: Context, interval: float, limit: int = 50) -> int:
    """Re-check the domains last checked more than ``interval`` seconds ago; returns how many were checked."""
    async with ctx.db.read() as conn:
        rows = await domain_store.due_for_check(conn, utcnow() - timedelta(seconds=interval), limit)
    for row in rows:
        try:
            await check(ctx, row)
        except NotFound:
            continue  # deleted meanwhile
    return len(rows)


async def run_rechecks(ctx: Context, interval: float, *, poll: float = 60.0) -> None:
    """Forever: re-check every checked domain once per ``interval`` seconds (0: never) and take the
    due steps of DKIM rotations (serve runs it as a task)."""
    while True:
        try:
            if interval > 0:
                await recheck_due(ctx, interval)
            await rotations_due(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad pass must not end the re-checks
            log.exception("domain re-check failed")
        await asyncio.sleep(min(poll, interval) if interval > 0 else poll)


# --------------------------------------------------------------------------- DKIM rotation
#
# A rotation creates a new generation of keys (RSA-2048 and Ed25519, fresh selectors) as pending:
# listed among the records to publish, not signing. Once every pending key's TXT record is seen
# in DNS, one transaction makes them active (signing) and the previous ones retiring: still
# listed, so messages signed just before the switch (queued, retried, or read days later) verify.
# After the grace period they are retired and their records flagged for removal. Signing uses
# active keys only, and a key signs only once its record is published: no message ever carries a
# signature that cannot be verified.


async def rotate(ctx: Context, who: Principal, domain_id: str) -> schemas.Domain:
    """Start a DKIM rotation (a no-op while one is waiting for its records); the domain with its records."""
    who.require_org()
    who.require("domain_update")
    row = await _domain_row(ctx, who, domain_id)
    await start_rotation(ctx, row.id, row.domain)
    return domain_store.to_domain(row, await records(ctx, row))


async def start_rotation(ctx: Context, domain_id: str, domain: str) -> list[str]:
    """Create the pending keys of a rotation; the selectors pending (those already waiting, if any)."""
    await ensure_dkim_keys(ctx, domain_id, domain)  # a rotation starts from signing keys
    async with ctx.db.read() as conn:
        states = await dkim_store.states(conn, domain_id)
    if waiting := [k.selector for k in states if k.status == PENDING]:
        return waiting
    taken = {k.selector for k in states}
    stamp = utcnow().strftime("%Y%m%d")
    n = 1
    while f"ap{stamp}{n}r" in taken or f"ap{stamp}{n}e" in taken:
        n += 1
    generated = await asyncio.to_thread(
        lambda: [
            dkim.generate_key(domain, f"ap{stamp}{n}r", dkim.RSA_SHA256),  # never below MIN_RSA_BITS
            dkim.generate_key(domain, f"ap{stamp}{n}e", dkim.ED25519_SHA256),
        ]
    )
    async with ctx.db.write() as conn:
        if await domain_store.lock_row(conn, domain_id) is None:
            raise NotFound("domain not found")
        current = await dkim_store.states(conn, domain_id)
        if waiting := [k.selector for k in current if k.status == PENDING]:  # another request won the race
            return waiting
        for key in generated:
            sealed = ctx.sealer.seal(key.private_pem.decode())
            await dkim_store.add(conn, domain_id, key.selector, key.algorithm, sealed, key.dns_txt(), status=PENDING)
    selectors = [key.selector for key in generated]
    log.info("domain %s: DKIM rotation started; publish selectors %s", domain, ", ".join(selectors))
    return selectors


async def advance_rotation(ctx: Context, domain_id: str, domain: str) -> list[str]:
    """Take the due rotation steps of one domain; what was done, e.g. ["switched", "retired"].

    Pending keys all seen in DNS -> they sign, the old ones retire; retiring keys past the grace
    period -> retired; keys signing for longer than the rotation interval -> a new rotation.
    """
    now = utcnow()
    done: list[str] = []
    async with ctx.db.read() as conn:
        states = await dkim_store.states(conn, domain_id)
    pending = [k for k in states if k.status == PENDING]
    if pending and ctx.resolver is not None:
        wanted = [
            dnscheck.Expected("dkim_next", "TXT", f"{k.selector}._domainkey.{domain}", k.public_txt) for k in pending
        ]
        findings = await dnscheck.check(ctx.resolver, domain, wanted, dns_setup(ctx))
        if all(f.status == "VALID" for f in findings):
            async with ctx.db.write() as conn:
                await domain_store.lock_row(conn, domain_id)
                if {k.selector for k in await dkim_store.states(conn, domain_id) if k.status == PENDING} == {
                    k.selector for k in pending
                }:
                    await dkim_store.switch(conn, domain_id, now)
                    done.append("switched")
            if done:
                # Sends cache their domain's keys (service/sending.py): sign with the new ones now.
                ctx.directory_changed()
                log.info("domain %s: DKIM signing switched to %s", domain, ", ".join(k.selector for k in pending))
    grace = timedelta(seconds=ctx.dkim_grace_period)
    if any(k.status == RETIRING and k.retiring_at is not None and k.retiring_at < now - grace for k in states):
        async with ctx.db.write() as conn:
            retired = await dkim_store.retire(conn, domain_id, now - grace, now)
        if retired:
            done.append("retired")
            log.info("domain %s: %d old DKIM key(s) retired; their records may be removed", domain, retired)
    signing = [k.activated_at or k.created_at for k in states if k.status == ACTIVE]
    interval = ctx.dkim_rotation_interval
    if not pending and signing and interval > 0 and min(signing) < now - timedelta(seconds=interval):
        await start_rotation(ctx, domain_id, domain)
        done.append("started")
    return done


async def rotations_due(ctx: Context, limit: int = 500) -> int:
    """Advance the DKIM rotations that have a step due; returns how many domains were looked at."""
    now = utcnow()
    interval = ctx.dkim_rotation_interval
    async with ctx.db.read() as conn:
        due = await dkim_store.rotation_due(
            conn,
            now - timedelta(seconds=ctx.dkim_grace_period),
            now - timedelta(seconds=interval) if interval > 0 else None,
            limit,
        )
    for domain_id, domain in due:
        try:
            await advance_rotation(ctx, domain_id, domain)
        except NotFound:
            continue  # deleted meanwhile
    return len(due)


async def mta_sts_policy(ctx: Context, host: str) -> str:
    """The MTA-STS policy (RFC 8461 §3.2) for a Host header "mta-sts.<domain>" of a hosted domain."""
    name = host.split(":", 1)[0].strip().rstrip(".").lower()
    if not name.startswith("mta-sts."):
        raise NotFound("no MTA-STS policy here")
    domain = name.removeprefix("mta-sts.")
    async with ctx.db.read() as conn:
        hosted = await domain_store.receiving(conn, domain)
    if hosted is None:
        raise NotFound("no MTA-STS policy here")
    return dnscheck.mta_sts_policy(domain, dns_setup(ctx))


async def add(ctx: Context, who: Principal, req: schemas.CreateDomain) -> tuple[schemas.Domain, bool]:
    who.require_org()
    who.require("domain_create")
    name = normalise_domain(req.domain)
    if req.client_id:
        async with ctx.db.read() as conn:
            existing = await domain_store.by_client_id(conn, who.organization_id, req.client_id)
        if existing is not None:
            return domain_store.to_domain(existing, await records(ctx, existing)), False
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
    return domain_store.to_domain(row, await records(ctx, row)), created


async def get(ctx: Context, who: Principal, domain_id: str) -> schemas.Domain:
    who.require("domain_read")
    row = await _domain_row(ctx, who, domain_id)
    return domain_store.to_domain(row, await records(ctx, row))


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
    return domain_store.to_domain(updated or row, await records(ctx, updated or row))


def _txt_strings(value: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets (RFC 1035 §3.3.14)."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"( {quoted} )" if len(chunks) > 1 else quoted


def zone_file(domain: schemas.Domain) -> str:
    """The records in BIND zone file format; a PTR record belongs to the reverse zone, so it is a comment."""
    lines = [
        f"; DNS records for {domain.domain} (BIND zone file format), generated by agentpost.",
        "; DMARC starts at p=none: move to p=quarantine, then p=reject, once the aggregate reports",
        "; show your mail passing aligned (see docs/dns.md).",
    ]
    for r in domain.records:
        value = _txt_strings(r.value) if r.type == "TXT" else f"{r.value}."
        prio = f"{r.priority} " if r.priority is not None else ""
        line = f"{r.name}.\t3600\tIN\t{r.type}\t{prio}{value}"
        if r.status == "REMOVE":
            lines.append("; a retired DKIM key: delete this record")
            line = "; " + line
        elif r.type == "PTR":
            lines.append("; in the reverse zone, set by whoever runs the sending address:")
            line = "; " + line
        lines.append(line)
    return "\n".join(lines) + "\n"
