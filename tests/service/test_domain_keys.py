"""Every domain gets DKIM keys (RSA-2048 and Ed25519) whose published records verify its signatures."""

from __future__ import annotations

from typing import Any

import dkim  # dkimpy, the reference verifier
import sqlalchemy as sa

from agentpost import schemas
from agentpost.service import domains, keys
from agentpost.service.context import Context

MESSAGE = (
    b"From: Agent <support@keys.example.test>\r\nTo: bob@remote.test\r\nSubject: signed\r\n"
    b"Date: Sat, 21 Nov 2026 07:00:00 +0000\r\nMessage-ID: <k1@keys.example.test>\r\n\r\nHello Bob.\r\n"
)


async def test_added_domain_publishes_one_rsa_and_one_ed25519_key_that_verify_its_signatures(ctx: Context) -> None:
    who = await keys.operator(ctx)
    domain, _ = await domains.add(ctx, who, schemas.CreateDomain(domain="keys.example.test"))
    dkim_records = {r.name: r.value for r in domain.records if "._domainkey." in r.name}
    assert len(dkim_records) == 2
    assert {v.split("k=")[1].split(";")[0] for v in dkim_records.values()} == {"rsa", "ed25519"}

    signer = await domains.signer(ctx, domain.domain_id, domain.domain)
    signed = signer.sign(MESSAGE) + MESSAGE

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return dkim_records[name.decode().rstrip(".")].encode()

    count = signed.count(b"DKIM-Signature:")
    assert count == 2
    for index in range(count):
        assert dkim.DKIM(signed).verify(idx=index, dnsfunc=dnsfunc)

    # The same keys on every later read (no regeneration), and the zone file splits long TXT values.
    again = await domains.get(ctx, who, domain.domain_id)
    assert {r.name: r.value for r in again.records if "._domainkey." in r.name} == dkim_records
    zone = domains.zone_file(again)
    rsa_line = next(line for line in zone.splitlines() if "k=rsa" in line)
    strings = rsa_line.split("( ", 1)[1].rsplit(" )", 1)[0]
    assert all(len(part) <= 257 for part in strings.split('" "'))  # <= 255 octets plus quotes


async def test_private_keys_are_sealed_at_rest(db: Any, ctx: Context) -> None:
    who = await keys.operator(ctx)
    domain, _ = await domains.add(ctx, who, schemas.CreateDomain(domain="sealed.example.test"))
    await domains.signer(ctx, domain.domain_id, domain.domain)
    async with db.read() as conn:
        rows = (await conn.execute(sa.text("SELECT private_enc FROM dkim_keys"))).all()
    assert rows and all("PRIVATE KEY" not in row[0] for row in rows)
