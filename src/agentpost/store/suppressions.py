"""Suppressed recipient addresses per organisation or inbox: check, add, list, reactivate."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import utcnow
from agentpost.store.tables import suppressions


async def suppressed(conn: AsyncConnection, organization_id: str, inbox_id: str, addresses: list[str]) -> set[str]:
    """Which of ``addresses`` (lowercased) are suppressed for this inbox or organisation-wide."""
    if not addresses:
        return set()
    query = sa.select(suppressions.c.address).where(
        suppressions.c.organization_id == organization_id,
        suppressions.c.scope.in_(["", inbox_id]),
        suppressions.c.address.in_([a.lower() for a in addresses]),
    )
    return {r[0] for r in (await conn.execute(query)).all()}


async def add(
    conn: AsyncConnection, organization_id: str, scope: str, address: str, reason: str, reply: str | None
) -> None:
    key = {"organization_id": organization_id, "scope": scope, "address": address.lower()}
    await conn.execute(suppressions.delete().where(*(getattr(suppressions.c, k) == v for k, v in key.items())))
    await conn.execute(suppressions.insert().values(**key, reason=reason, reply=reply, created_at=utcnow()))


async def list_rows(conn: AsyncConnection, organization_id: str, scope: str | None) -> list[Any]:
    query = sa.select(suppressions).where(suppressions.c.organization_id == organization_id)
    if scope is not None:
        query = query.where(suppressions.c.scope == scope)
    return list((await conn.execute(query.order_by(suppressions.c.created_at.desc()))).all())


async def entries(conn: AsyncConnection, organization_id: str, address: str, scope: str | None) -> list[Any]:
    """The suppressions of one address: every scope, or only ``scope`` and organisation-wide ones."""
    query = sa.select(suppressions).where(
        suppressions.c.organization_id == organization_id, suppressions.c.address == address.lower()
    )
    if scope is not None:
        query = query.where(suppressions.c.scope.in_(["", scope]))
    return list((await conn.execute(query.order_by(suppressions.c.created_at.desc()))).all())


async def remove(conn: AsyncConnection, organization_id: str, address: str, scope: str | None) -> int:
    query = suppressions.delete().where(
        suppressions.c.organization_id == organization_id, suppressions.c.address == address.lower()
    )
    if scope is not None:
        query = query.where(suppressions.c.scope == scope)
    return int((await conn.execute(query)).rowcount)
