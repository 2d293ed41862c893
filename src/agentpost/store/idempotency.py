"""Idempotency-Key results of send-like calls: look up (within 24 h) and record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import utcnow
from agentpost.store.tables import idempotency_keys

LIFETIME = timedelta(hours=24)


async def find(conn: AsyncConnection, organization_id: str, key: str) -> tuple[str, dict[str, Any]] | None:
    """(request hash, response) of a key used within its lifetime, else None."""
    row = (
        await conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.organization_id == organization_id,
                idempotency_keys.c.key == key,
                idempotency_keys.c.created_at > utcnow() - LIFETIME,
            )
        )
    ).first()
    return (row.request_hash, dict(row.response)) if row else None


async def record(
    conn: AsyncConnection, organization_id: str, key: str, request_hash: str, response: dict[str, Any]
) -> None:
    # An expired row for the same key is replaced.
    await conn.execute(
        idempotency_keys.delete().where(
            idempotency_keys.c.organization_id == organization_id, idempotency_keys.c.key == key
        )
    )
    await conn.execute(
        idempotency_keys.insert().values(
            organization_id=organization_id, key=key, request_hash=request_hash, response=response, created_at=utcnow()
        )
    )
