"""DKIM keys per domain: add (sealed by the caller), list the active ones, retire."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store.tables import dkim_keys


@dataclass(frozen=True, slots=True)
class StoredKey:
    selector: str
    algorithm: str
    private_enc: str
    public_txt: str


async def add(
    conn: AsyncConnection, domain_id: str, selector: str, algorithm: str, private_enc: str, public_txt: str
) -> None:
    await conn.execute(
        dkim_keys.insert().values(
            id=new_id("dk_"),
            domain_id=domain_id,
            selector=selector,
            algorithm=algorithm,
            private_enc=private_enc,
            public_txt=public_txt,
            status="active",
            created_at=utcnow(),
        )
    )


async def active(conn: AsyncConnection, domain_id: str) -> list[StoredKey]:
    """Active keys, RSA first (the order signatures are added in)."""
    query = (
        sa.select(dkim_keys)
        .where(dkim_keys.c.domain_id == domain_id, dkim_keys.c.status == "active")
        .order_by(dkim_keys.c.algorithm.desc(), dkim_keys.c.created_at)
    )
    rows = (await conn.execute(query)).all()
    return [StoredKey(r.selector, r.algorithm, r.private_enc, r.public_txt) for r in rows]
