"""Domain verification as a use case: statuses kept, domain.verified once, re-checks flag broken records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agentpost import schemas
from agentpost.errors import NotFound
from agentpost.net.dns import FakeResolver
from agentpost.notify.bus import EventBus
from agentpost.service import domains, keys
from agentpost.service.context import Context, Sealer
from agentpost.service.dnscheck import DnsSetup, mta_sts_id
from agentpost.store import events, tables

HOST = "mx.agentpost.test"
DOMAIN = "agents.example.test"


def _context(db: Any, resolver: FakeResolver) -> Context:
    ctx = Context(db, Sealer("test-secret-key"), EventBus(), lambda: None, HOST, "http://127.0.0.1")
    ctx.resolver = resolver
    ctx.dns_setup = DnsSetup(hostname=HOST, source="127.0.0.2")
    return ctx


def _publish(resolver: FakeResolver, domain: schemas.Domain, skip: tuple[str, ...] = ()) -> None:
    """Put the records agentpost asks for into the fake zone, except those whose name is in ``skip``."""
    resolver.zone.clear()
    for r in domain.records:
        if r.name in skip or r.type in ("PTR", "CNAME"):
            continue
        entry = resolver.zone.setdefault(r.name, {})
        entry.setdefault(r.type, []).append((r.priority, r.value) if r.type == "MX" else r.value)


async def _events(db: Any) -> list[events.EventRow]:
    async with db.read() as conn:
        return [e for e in await events.after(conn, 0, 100) if e.event_type.startswith("domain.")]


async def test_verify_turns_a_domain_verified_once_and_a_recheck_flags_broken_records(db: Any) -> None:
    resolver = FakeResolver()
    ctx = _context(db, resolver)
    who = await keys.operator(ctx)
    added, _ = await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    assert added.status == "NOT_STARTED" and all("not checked yet" in (r.reason or "") for r in added.records)

    _publish(resolver, added, skip=(f"_dmarc.{DOMAIN}",))
    pending = await domains.verify(ctx, who, added.domain_id)
    assert pending.status == "PENDING" and pending.reason and "_dmarc" in pending.reason
    by_name = {(r.type, r.name): r for r in pending.records}
    assert by_name[("TXT", f"_dmarc.{DOMAIN}")].status == "MISSING"
    assert by_name[("MX", DOMAIN)].status == "VALID"
    assert await _events(db) == []

    _publish(resolver, added)
    verified = await domains.verify(ctx, who, DOMAIN)  # by name works too
    assert verified.status == "VERIFIED" and verified.reason is None
    again = await domains.verify(ctx, who, added.domain_id)
    assert again.status == "VERIFIED"
    [event] = await _events(db)  # only the first verification is an event
    assert event.event_type == "domain.verified" and event.organization_id == who.organization_id
    async with db.read() as conn:
        rendered = await events.render(conn, event)
    assert rendered is not None and rendered["domain"]["domain_id"] == added.domain_id
    assert rendered["domain"]["status"] == "VERIFIED"

    # The stored check is what a plain read shows.
    assert (await domains.get(ctx, who, added.domain_id)).records == again.records

    # Nothing due yet; once the interval has passed, the re-check finds the SPF record changed.
    assert await domains.recheck_due(ctx, interval=3600) == 0
    resolver.zone[DOMAIN]["TXT"] = ["v=spf1 ip4:192.0.2.1 -all"]
    async with db.write() as conn:
        await conn.execute(tables.domains.update().values(checked_at=verified.updated_at - timedelta(hours=7)))
    assert await domains.recheck_due(ctx, interval=3600) == 1
    broken = await domains.get(ctx, who, added.domain_id)
    assert broken.status == "INVALID" and broken.reason and "127.0.0.2 is not authorised" in broken.reason


async def test_verify_needs_the_domain_in_scope_and_a_resolver(db: Any) -> None:
    ctx = _context(db, FakeResolver())
    who = await keys.operator(ctx)
    with pytest.raises(NotFound):
        await domains.verify(ctx, who, "dom_missing")
    added, _ = await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    ctx.resolver = None
    with pytest.raises(Exception, match="no DNS resolver"):
        await domains.verify(ctx, who, added.domain_id)


async def test_mta_sts_policy_is_served_for_hosted_domains_only(db: Any) -> None:
    ctx = _context(db, FakeResolver())
    who = await keys.operator(ctx)
    added, _ = await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    policy = await domains.mta_sts_policy(ctx, f"mta-sts.{DOMAIN}:443")
    assert policy == f"version: STSv1\r\nmode: testing\r\nmx: {HOST}\r\nmax_age: 604800\r\n"
    sts = next(r for r in added.records if r.name == f"_mta-sts.{DOMAIN}")
    assert sts.value == f"v=STSv1; id={mta_sts_id(policy)}"
    with pytest.raises(NotFound):
        await domains.mta_sts_policy(ctx, "mta-sts.other.test")
    with pytest.raises(NotFound):
        await domains.mta_sts_policy(ctx, DOMAIN)
