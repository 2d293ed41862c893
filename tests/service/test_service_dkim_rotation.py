"""DKIM rotation as a use case: pending keys are published but do not sign; signing switches once
their records are seen in DNS; the old keys stay published for the grace period, then are flagged
for removal; rotations also start on their own once keys have signed for the rotation interval."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from agentpost import schemas
from agentpost.config import DomainsConfig
from agentpost.mailauth import dkim_verify
from agentpost.model import utcnow
from agentpost.net.dns import FakeResolver
from agentpost.notify.bus import EventBus
from agentpost.service import domains, keys
from agentpost.service.context import Context, Sealer
from agentpost.service.dnscheck import DnsSetup
from agentpost.store import tables

HOST = "mx.agentpost.test"
DOMAIN = "agents.example.test"
MESSAGE = b"From: a@agents.example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def _context(db: Any, resolver: FakeResolver) -> Context:
    ctx = Context(db, Sealer("test-secret-key"), EventBus(), lambda: None, HOST, "http://127.0.0.1")
    ctx.resolver = resolver
    ctx.dns_setup = DnsSetup(hostname=HOST, source="127.0.0.2")
    return ctx


def _publish(resolver: FakeResolver, domain: schemas.Domain) -> None:
    """Add the records agentpost asks for (except PTR and CNAME) to the fake zone; keep what is there."""
    for r in domain.records:
        if r.type in ("PTR", "CNAME") or r.status == "REMOVE":
            continue
        values = resolver.zone.setdefault(r.name, {}).setdefault(r.type, [])
        value = (r.priority, r.value) if r.type == "MX" else r.value
        if value not in values:
            values.append(value)


def _dkim(domain: schemas.Domain) -> dict[str, tuple[str, str]]:
    """selector -> (status, reason) of the domain's DKIM records."""
    return {r.name.split(".")[0]: (r.status, r.reason or "") for r in domain.records if "._domainkey." in r.name}


async def _signed_by(ctx: Context, domain: schemas.Domain) -> tuple[bytes, list[str]]:
    signer = await domains.signer(ctx, domain.domain_id, DOMAIN)
    raw = signer.sign(MESSAGE) + MESSAGE
    return raw, sorted(r.selector for r in await dkim_verify.verify(ctx.resolver, raw))  # type: ignore[arg-type]


async def _age(db: Any, column: str, by: timedelta) -> None:
    """Move every key's ``column`` time back by ``by``, as if that much time had passed."""
    keys = tables.dkim_keys
    async with db.write() as conn:
        for key_id, at in (await conn.execute(sa.select(keys.c.id, keys.c[column]))).all():
            if at is not None:
                await conn.execute(keys.update().where(keys.c.id == key_id).values({column: at - by}))


async def _verifies(resolver: FakeResolver, raw: bytes) -> list[str]:
    return [r.result for r in await dkim_verify.verify(resolver, raw)]


async def test_rotation_publishes_then_switches_then_retires_and_every_message_verifies(db: Any) -> None:
    resolver = FakeResolver()
    ctx = _context(db, resolver)
    who = await keys.operator(ctx)
    added, _ = await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    _publish(resolver, added)
    assert (await domains.verify(ctx, who, added.domain_id)).status == "VERIFIED"
    old = sorted(_dkim(added))
    before, signed = await _signed_by(ctx, added)
    assert signed == old

    # Rotate: two new selectors to publish; signing has not moved, and the domain stays VERIFIED.
    rotating = await domains.rotate(ctx, who, added.domain_id)
    new = sorted(set(_dkim(rotating)) - set(old))
    assert len(new) == 2 and all(s.startswith("ap") for s in new) and {s[-1] for s in new} == {"r", "e"}
    assert all("next key" in _dkim(rotating)[s][1] for s in new)
    assert (await domains.rotate(ctx, who, DOMAIN)).records == rotating.records  # waiting: no second rotation
    assert await domains.advance_rotation(ctx, added.domain_id, DOMAIN) == []  # not in DNS yet
    checked = await domains.verify(ctx, who, added.domain_id)
    assert checked.status == "VERIFIED" and all(_dkim(checked)[s][0] == "MISSING" for s in new)
    assert (await _signed_by(ctx, added))[1] == old

    # Published: the re-check sees the records and signing switches; the old keys stay listed.
    _publish(resolver, rotating)
    assert await domains.rotations_due(ctx) == 1
    after, signed = await _signed_by(ctx, added)
    assert signed == new
    during = await domains.get(ctx, who, added.domain_id)
    assert all("previous key, no longer signing: keep it until" in _dkim(during)[s][1] for s in old)
    assert await _verifies(resolver, before) == ["pass", "pass"]
    assert await _verifies(resolver, after) == ["pass", "pass"]

    # Within the grace period nothing more happens; after it, the old keys are retired: REMOVE.
    assert await domains.advance_rotation(ctx, added.domain_id, DOMAIN) == []
    await _age(db, "retiring_at", timedelta(days=7, seconds=1))
    assert await domains.advance_rotation(ctx, added.domain_id, DOMAIN) == ["retired"]
    done = await domains.verify(ctx, who, added.domain_id)
    assert done.status == "VERIFIED"
    for s in old:
        status, reason = _dkim(done)[s]
        assert status == "REMOVE" and "retired on" in reason and "delete the record" in reason
    assert all(_dkim(done)[s][0] == "VALID" for s in new)
    zone = domains.zone_file(done)
    assert all(f"; {s}._domainkey." in zone for s in old) and all(f"\n{s}._domainkey." in zone for s in new)
    assert (await _signed_by(ctx, added))[1] == new
    assert await domains.rotations_due(ctx) == 0  # nothing left to do


async def test_rotation_starts_on_schedule_with_fresh_selectors(db: Any) -> None:
    resolver = FakeResolver()
    ctx = _context(db, resolver)
    ctx.dkim_rotation_interval = 182 * 86400.0
    who = await keys.operator(ctx)
    added, _ = await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    assert await domains.rotations_due(ctx) == 0
    await _age(db, "activated_at", timedelta(days=183))
    assert await domains.advance_rotation(ctx, added.domain_id, DOMAIN) == ["started"]
    first = set(_dkim(await domains.get(ctx, who, added.domain_id))) - set(_dkim(added))
    _publish(resolver, await domains.get(ctx, who, added.domain_id))
    assert await domains.advance_rotation(ctx, added.domain_id, DOMAIN) == ["switched"]

    # A second rotation the same day gets other selectors.
    rotated = await domains.rotate(ctx, who, added.domain_id)
    second = set(_dkim(rotated)) - set(_dkim(added)) - first
    assert len(second) == 2 and not second & first
    stamp = utcnow().strftime("%Y%m%d")
    assert sorted(first | second) == sorted([f"ap{stamp}1e", f"ap{stamp}1r", f"ap{stamp}2e", f"ap{stamp}2r"])


async def test_no_rotation_on_schedule_when_the_interval_is_zero(db: Any) -> None:
    ctx = _context(db, FakeResolver())
    ctx.dkim_rotation_interval = 0
    who = await keys.operator(ctx)
    await domains.add(ctx, who, schemas.CreateDomain(domain=DOMAIN))
    await _age(db, "activated_at", timedelta(days=3650))
    assert await domains.rotations_due(ctx) == 0


def test_rotation_defaults_to_six_months_with_a_week_of_grace() -> None:
    config = DomainsConfig()
    assert config.dkim_rotation_interval == 182 * 86400 and config.dkim_grace_period == 7 * 86400
    with pytest.raises(ValueError):
        DomainsConfig(dkim_grace_period=-1)
