"""Inboxes: create, get, list, update, delete, and the address -> inbox map the MX consults."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost import schemas
from agentpost.model import utcnow
from agentpost.store.tables import inboxes

DEFAULT_POD = "default"


def to_inbox(row: Any) -> schemas.Inbox:
    return schemas.Inbox(
        pod_id=DEFAULT_POD,
        inbox_id=row.id,
        email=row.email,
        display_name=row.display_name,
        client_id=row.client_id,
        status="paused" if row.status == "paused" else None,
        metadata=row.metadata,
        auth_policy=schemas.AuthPolicy.model_validate(row.auth_policy or {}),
        default_deny=schemas.DefaultDeny.model_validate(row.default_deny or {}),
        send_limits=schemas.SendLimits.model_validate(row.send_limits or {}),
        loop_protection=schemas.LoopProtection.model_validate(row.loop_protection or {}),
        send_requires_approval=bool(row.send_requires_approval),
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


async def get_row(conn: AsyncConnection, inbox_id: str) -> Any | None:
    return (await conn.execute(sa.select(inboxes).where(inboxes.c.id == inbox_id.lower()))).first()


async def by_client_id(conn: AsyncConnection, organization_id: str, client_id: str) -> Any | None:
    query = sa.select(inboxes).where(inboxes.c.organization_id == organization_id, inboxes.c.client_id == client_id)
    return (await conn.execute(query)).first()


async def create(
    conn: AsyncConnection,
    organization_id: str,
    email: str,
    domain: str,
    display_name: str | None,
    client_id: str | None,
    status: str,
    metadata: dict[str, Any] | None,
    auth_policy: dict[str, str] | None = None,
    send_requires_approval: bool = False,
    guardrails: dict[str, Any] | None = None,
) -> Any:
    """``guardrails``: the inbox's ``default_deny``, ``send_limits`` and ``loop_protection`` columns."""
    now = utcnow()
    await conn.execute(
        inboxes.insert().values(
            id=email.lower(),
            organization_id=organization_id,
            email=email,
            domain=domain,
            display_name=display_name,
            client_id=client_id,
            status=status,
            metadata=metadata,
            auth_policy=auth_policy,
            send_requires_approval=send_requires_approval,
            **(guardrails or {}),
            created_at=now,
            updated_at=now,
        )
    )
    return await get_row(conn, email)


async def list_page(
    conn: AsyncConnection, organization_id: str, limit: int, after: str | None, only: str | None = None
) -> list[Any]:
    # Newest first; the key is (created_at, id).
    query = sa.select(inboxes).where(inboxes.c.organization_id == organization_id)
    if only is not None:
        query = query.where(inboxes.c.id == only)
    if after:
        anchor = await get_row(conn, after)
        if anchor is not None:
            query = query.where(
                sa.or_(
                    inboxes.c.created_at < anchor.created_at,
                    sa.and_(inboxes.c.created_at == anchor.created_at, inboxes.c.id < anchor.id),
                )
            )
    query = query.order_by(inboxes.c.created_at.desc(), inboxes.c.id.desc()).limit(limit + 1)
    return list((await conn.execute(query)).all())


async def update(conn: AsyncConnection, inbox_id: str, **values: Any) -> None:
    await conn.execute(inboxes.update().where(inboxes.c.id == inbox_id).values(**values, updated_at=utcnow()))


async def delete(conn: AsyncConnection, inbox_id: str) -> None:
    await conn.execute(inboxes.delete().where(inboxes.c.id == inbox_id))


async def routing(conn: AsyncConnection) -> dict[str, tuple[str, str]]:
    """Every inbox address -> (organisation id, status)."""
    rows = (await conn.execute(sa.select(inboxes.c.id, inboxes.c.organization_id, inboxes.c.status))).all()
    return {r.id: (r.organization_id, r.status) for r in rows}
