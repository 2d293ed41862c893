"""DKIM keys per domain: add (sealed by the caller), the signing ones, and the rotation states.

A key is pending (published, not signing), active (signing), retiring (no longer signing but
still published, so mail signed with it verifies) or retired (its record may be removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import new_id, utcnow
from agentpost.store.tables import dkim_keys, domains

PENDING = "pending"
ACTIVE = "active"
RETIRING = "retiring"
RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class StoredKey:
    selector: str
    algorithm: str
    private_enc: str
    public_txt: str


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key as rotation sees it (no private key)."""

    selector: str
    algorithm: str
    public_txt: str
    status: str
    created_at: datetime
    activated_at: datetime | None
    retiring_at: datetime | None
    retired_at: datetime | None


async def add(
    conn: AsyncConnection,
    domain_id: str,
    selector: str,
    algorithm: str,
    private_enc: str,
    public_txt: str,
    status: str = ACTIVE,
) -> None:
    now = utcnow()
    await conn.execute(
        dkim_keys.insert().values(
            id=new_id("dk_"),
            domain_id=domain_id,
            selector=selector,
            algorithm=algorithm,
            private_enc=private_enc,
            public_txt=public_txt,
            status=status,
            created_at=now,
            activated_at=now if status == ACTIVE else None,
        )
    )


async def active(conn: AsyncConnection, domain_id: str) -> list[StoredKey]:
    """Active keys, RSA first (the order signatures are added in)."""
    query = (
        sa.select(dkim_keys)
        .where(dkim_keys.c.domain_id == domain_id, dkim_keys.c.status == ACTIVE)
        .order_by(dkim_keys.c.algorithm.desc(), dkim_keys.c.created_at)
    )
    rows = (await conn.execute(query)).all()
    return [StoredKey(r.selector, r.algorithm, r.private_enc, r.public_txt) for r in rows]


async def states(conn: AsyncConnection, domain_id: str) -> list[KeyState]:
    """Every key of the domain, oldest first (RSA before Ed25519 within a generation)."""
    query = (
        sa.select(dkim_keys)
        .where(dkim_keys.c.domain_id == domain_id)
        .order_by(dkim_keys.c.created_at, dkim_keys.c.algorithm.desc(), dkim_keys.c.selector)
    )
    return [
        KeyState(
            r.selector, r.algorithm, r.public_txt, r.status, r.created_at, r.activated_at, r.retiring_at, r.retired_at
        )
        for r in (await conn.execute(query)).all()
    ]


async def switch(conn: AsyncConnection, domain_id: str, now: datetime) -> None:
    """The pending keys start signing; the active ones stop but stay published (retiring)."""
    await conn.execute(
        dkim_keys.update()
        .where(dkim_keys.c.domain_id == domain_id, dkim_keys.c.status == ACTIVE)
        .values(status=RETIRING, retiring_at=now)
    )
    await conn.execute(
        dkim_keys.update()
        .where(dkim_keys.c.domain_id == domain_id, dkim_keys.c.status == PENDING)
        .values(status=ACTIVE, activated_at=now)
    )


async def retire(conn: AsyncConnection, domain_id: str, retiring_before: datetime, now: datetime) -> int:
    """Retiring keys that stopped signing before ``retiring_before`` become retired; returns how many."""
    result = await conn.execute(
        dkim_keys.update()
        .where(
            dkim_keys.c.domain_id == domain_id,
            dkim_keys.c.status == RETIRING,
            dkim_keys.c.retiring_at < retiring_before,
        )
        .values(status=RETIRED, retired_at=now)
    )
    return int(result.rowcount or 0)


async def rotation_due(
    conn: AsyncConnection, retiring_before: datetime, active_before: datetime | None, limit: int
) -> list[tuple[str, str]]:
    """(domain id, name) of domains whose keys have a step to take: a pending key to look up, a
    retiring key past its grace period, or (``active_before`` set) keys signing since before it."""
    pending = sa.select(dkim_keys.c.domain_id).where(dkim_keys.c.status == PENDING)
    conditions = [
        dkim_keys.c.status == PENDING,
        sa.and_(dkim_keys.c.status == RETIRING, dkim_keys.c.retiring_at < retiring_before),
    ]
    if active_before is not None:
        signing_since = sa.func.coalesce(dkim_keys.c.activated_at, dkim_keys.c.created_at)
        conditions.append(
            sa.and_(
                dkim_keys.c.status == ACTIVE,
                signing_since < active_before,
                dkim_keys.c.domain_id.not_in(pending),
            )
        )
    query = (
        sa.select(domains.c.id, domains.c.domain)
        .join(dkim_keys, dkim_keys.c.domain_id == domains.c.id)
        .where(sa.or_(*conditions))
        .group_by(domains.c.id, domains.c.domain)
        .order_by(domains.c.id)
        .limit(limit)
    )
    return [(r.id, r.domain) for r in (await conn.execute(query)).all()]
