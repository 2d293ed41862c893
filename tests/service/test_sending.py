"""A starting process primes the send path: the DKIM signers of the hosted domains (newest first, up
to a cap) are loaded before the ports open, under the cache key the first send looks up."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from agentpost import schemas
from agentpost.service import domains, inboxes, keys, sending
from agentpost.service.context import Context


async def test_prime_loads_every_hosted_domains_signer_and_a_send_finds_it_loaded(ctx: Context) -> None:
    who = await keys.operator(ctx)
    first, _ = await domains.add(ctx, who, schemas.CreateDomain(domain="first.prime.test"))
    second, _ = await domains.add(ctx, who, schemas.CreateDomain(domain="second.prime.test"))
    inbox, _ = await inboxes.create(ctx, who, schemas.CreateInbox(username="agent", domain="second.prime.test"))
    assert not ctx.signers

    await sending.prime(ctx)

    assert len(ctx.signers) == 2
    primed = set(map(id, ctx.signers.values()))
    # What a send does (service/messages.py): its facts' keys, then the signer for them.
    facts = await sending.facts(ctx, inbox.inbox_id, ["someone@remote.test"])
    assert facts.sender is not None and facts.sender.domain is not None
    signer = await domains.signer(ctx, facts.sender.domain.id, second.domain, facts.sender.keys)
    assert id(signer) in primed and len(ctx.signers) == 2, "the send loaded no key of its own"
    # The other domain, with no inbox yet, is loaded all the same.
    other = await domains.signer(ctx, first.domain_id, first.domain)
    assert id(other) in primed and len(ctx.signers) == 2


async def test_prime_loads_the_newest_domains_up_to_its_cap(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "PRIMED_DOMAINS", 2)
    who = await keys.operator(ctx)
    for name in ("a.prime.test", "b.prime.test", "c.prime.test"):
        await domains.add(ctx, who, schemas.CreateDomain(domain=name))

    await sending.prime(ctx)

    assert sorted(domain for _, domain, _ in ctx.signers) == ["b.prime.test", "c.prime.test"]


async def test_prime_with_nothing_hosted_loads_nothing(ctx: Context) -> None:
    await sending.prime(ctx)
    assert not ctx.signers


async def test_a_domain_whose_keys_do_not_load_is_skipped_and_the_others_load(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    who = await keys.operator(ctx)
    for name in ("good.prime.test", "broken.prime.test"):
        await domains.add(ctx, who, schemas.CreateDomain(domain=name))
    async with ctx.db.read() as conn:
        rows = await conn.execute(
            sa.text("SELECT k.private_enc FROM dkim_keys k JOIN domains d ON d.id = k.domain_id WHERE d.domain = :d"),
            {"d": "broken.prime.test"},
        )
        broken = {row[0] for row in rows}
    unseal = ctx.sealer.unseal

    def unseal_or_fail(token: str) -> str:  # as if sealed under another secret key
        if token in broken:
            raise ValueError("cannot unseal")
        return unseal(token)

    monkeypatch.setattr(ctx.sealer, "unseal", unseal_or_fail)

    await sending.prime(ctx)

    assert [domain for _, domain, _ in ctx.signers] == ["good.prime.test"]
    assert "broken.prime.test" in caplog.text
