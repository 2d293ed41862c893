"""The MTA-STS policy last fetched per recipient domain (RFC 8461 §5.1): read, replace, and keep it for the worker."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.net.mtasts import CachedPolicy, Policy
from agentpost.store.db import Database
from agentpost.store.tables import mta_sts_policies


def _cached(row: Any) -> CachedPolicy:
    policy = Policy(row.mode, tuple(str(pattern) for pattern in row.mx), int(row.max_age))
    return CachedPolicy(row.domain, row.policy_id, policy, row.fetched_at)


async def get(conn: AsyncConnection, domain: str) -> CachedPolicy | None:
    """The stored policy of ``domain`` (expired or not: the caller decides), or None."""
    row = (await conn.execute(sa.select(mta_sts_policies).where(mta_sts_policies.c.domain == domain))).first()
    return _cached(row) if row is not None else None


async def put(conn: AsyncConnection, cached: CachedPolicy) -> None:
    """Store ``cached`` as the policy of its domain, replacing the previous one (several processes may race: upsert)."""
    values = {
        "domain": cached.domain,
        "policy_id": cached.id,
        "mode": cached.policy.mode,
        "mx": list(cached.policy.mx),
        "max_age": cached.policy.max_age,
        "fetched_at": cached.fetched_at,
        "expires_at": cached.expires_at,
    }
    changed = {key: value for key, value in values.items() if key != "domain"}
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(mta_sts_policies).values(**values)
        await conn.execute(pg.on_conflict_do_update(index_elements=["domain"], set_=changed))
    else:
        lite = sqlite.insert(mta_sts_policies).values(**values)
        await conn.execute(lite.on_conflict_do_update(index_elements=["domain"], set_=changed))


class PolicyTable:
    """``net.mtasts.PolicyStore`` on the database: the outbound worker's policies survive a restart."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, domain: str) -> CachedPolicy | None:
        async with self.db.read() as conn:
            return await get(conn, domain)

    async def save(self, cached: CachedPolicy) -> None:
        async with self.db.write() as conn:
            await put(conn, cached)
