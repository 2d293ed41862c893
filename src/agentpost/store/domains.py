"""Hosted domains: add, list, get, delete, and the hosted-domain set the MX consults."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost import schemas
from agentpost.model import new_id, utcnow
from agentpost.store.tables import domains


def _item(row: Any) -> schemas.DomainItem:
    return schemas.DomainItem(
        domain_id=row.id,
        domain=row.domain,
        feedback_enabled=row.feedback_enabled,
        inbound_enabled=row.inbound_enabled,
        subdomains_enabled=False,
        tracking_enabled=False,
        client_id=row.client_id,
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


def to_domain(row: Any, records: list[schemas.VerificationRecord]) -> schemas.Domain:
    item = _item(row)
    return schemas.Domain(**item.model_dump(), status=row.status, reason=row.status_reason, records=records)


async def add(
    conn: AsyncConnection,
    organization_id: str,
    name: str,
    client_id: str | None = None,
    feedback_enabled: bool = True,
    inbound_enabled: bool = True,
) -> tuple[Any, bool]:
    """Insert (or return the existing row for the same client_id/name). Returns (row, created)."""
    existing = (await conn.execute(sa.select(domains).where(domains.c.domain == name))).first()
    if existing is not None:
        return existing, False
    now = utcnow()
    values = dict(
        id=new_id("dom_"),
        organization_id=organization_id,
        domain=name,
        status="NOT_STARTED",
        feedback_enabled=feedback_enabled,
        inbound_enabled=inbound_enabled,
        client_id=client_id,
        created_at=now,
        updated_at=now,
    )
    await conn.execute(domains.insert().values(**values))
    row = (await conn.execute(sa.select(domains).where(domains.c.id == values["id"]))).one()
    return row, True


async def get_row(conn: AsyncConnection, organization_id: str, key: str) -> Any | None:
    """By id or by name."""
    query = sa.select(domains).where(
        domains.c.organization_id == organization_id,
        sa.or_(domains.c.id == key, domains.c.domain == key.lower()),
    )
    return (await conn.execute(query)).first()


async def by_client_id(conn: AsyncConnection, organization_id: str, client_id: str) -> Any | None:
    query = sa.select(domains).where(domains.c.organization_id == organization_id, domains.c.client_id == client_id)
    return (await conn.execute(query)).first()


async def list_page(
    conn: AsyncConnection, organization_id: str, limit: int, after_id: str | None
) -> list[schemas.DomainItem]:
    query = sa.select(domains).where(domains.c.organization_id == organization_id)
    if after_id:
        query = query.where(domains.c.id < after_id)
    rows = (await conn.execute(query.order_by(domains.c.id.desc()).limit(limit + 1))).all()
    return [_item(r) for r in rows]


async def update(conn: AsyncConnection, domain_id: str, **values: Any) -> None:
    await conn.execute(domains.update().where(domains.c.id == domain_id).values(**values, updated_at=utcnow()))


async def delete(conn: AsyncConnection, domain_id: str) -> None:
    await conn.execute(domains.delete().where(domains.c.id == domain_id))


async def hosted(conn: AsyncConnection) -> dict[str, str]:
    """Every domain receiving mail (inbound enabled) -> its organisation id."""
    query = sa.select(domains.c.domain, domains.c.organization_id).where(domains.c.inbound_enabled.is_(True))
    rows = (await conn.execute(query)).all()
    return {r.domain: r.organization_id for r in rows}


async def first(conn: AsyncConnection, organization_id: str) -> str | None:
    """The organisation's first domain: where inboxes go when no domain is named."""
    query = sa.select(domains.c.domain).where(domains.c.organization_id == organization_id).order_by(domains.c.id)
    row = (await conn.execute(query.limit(1))).first()
    return str(row[0]) if row else None


async def receiving(conn: AsyncConnection, name: str) -> str | None:
    """The organisation of a domain that receives mail (inbound enabled), or None."""
    query = sa.select(domains.c.organization_id).where(domains.c.domain == name, domains.c.inbound_enabled.is_(True))
    row = (await conn.execute(query)).first()
    return str(row[0]) if row else None


async def lock_row(conn: AsyncConnection, domain_id: str) -> Any | None:
    """The row, locked until the transaction ends (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises anyway),
    so that two nodes checking one domain agree on its status change."""
    query = sa.select(domains).where(domains.c.id == domain_id).with_for_update()
    return (await conn.execute(query)).first()


async def save_check(
    conn: AsyncConnection,
    domain_id: str,
    status: str,
    reason: str | None,
    check: list[dict[str, Any]],
    checked_at: datetime,
    verified_at: datetime | None,
) -> None:
    """Record a DNS check of the domain's records (service/dnscheck.py) and the status it gave."""
    values: dict[str, Any] = dict(status=status, status_reason=reason, dns_check=check, checked_at=checked_at)
    if verified_at is not None:
        values["verified_at"] = verified_at
    await conn.execute(domains.update().where(domains.c.id == domain_id).values(**values, updated_at=checked_at))


async def due_for_check(conn: AsyncConnection, checked_before: datetime, limit: int) -> list[Any]:
    """Domains checked before, last before ``checked_before``: the longest unchecked first.

    A domain never checked waits for its owner's first verify (its records may not be published yet)."""
    query = (
        sa.select(domains)
        .where(domains.c.checked_at < checked_before)
        .order_by(domains.c.checked_at, domains.c.id)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())
