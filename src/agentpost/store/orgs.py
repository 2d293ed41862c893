"""Organisations and API keys: create, look up by key hash, list, delete."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost import schemas
from agentpost.model import new_id, utcnow
from agentpost.store.tables import api_keys, organizations

KEY_PREFIX = "ap_"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    api_key_id: str
    organization_id: str
    inbox_id: str | None
    permissions: dict[str, bool] | None
    expires_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def default_organization(conn: AsyncConnection) -> str:
    """The first organisation, created on demand (single-tenant installs have exactly one)."""
    row = (await conn.execute(sa.select(organizations.c.id).order_by(organizations.c.created_at).limit(1))).first()
    if row:
        return str(row[0])
    org_id = new_id("org_")
    await conn.execute(organizations.insert().values(id=org_id, name="default", created_at=utcnow()))
    return org_id


def _api_key(row: Any) -> schemas.ApiKey:
    return schemas.ApiKey(
        api_key_id=row.id,
        prefix=row.prefix,
        name=row.name,
        inbox_id=row.inbox_id,
        used_at=row.used_at,
        permissions=row.permissions,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
    )


async def create_key(
    conn: AsyncConnection,
    organization_id: str,
    name: str,
    inbox_id: str | None = None,
    permissions: dict[str, bool] | None = None,
    expires_at: datetime | None = None,
) -> schemas.CreateApiKeyResponse:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    key_id = new_id("key_")
    prefix = key[:10]
    await conn.execute(
        api_keys.insert().values(
            id=key_id,
            organization_id=organization_id,
            inbox_id=inbox_id,
            name=name,
            prefix=prefix,
            key_hash=hash_key(key),
            permissions=permissions,
            created_at=now,
            updated_at=now,
            expires_at=expires_at,
        )
    )
    return schemas.CreateApiKeyResponse(
        api_key_id=key_id,
        api_key=key,
        prefix=prefix,
        name=name,
        inbox_id=inbox_id,
        permissions=permissions,
        created_at=now,
        expires_at=expires_at,
    )


async def find_key(conn: AsyncConnection, key: str) -> KeyRecord | None:
    return await find_key_by_hash(conn, hash_key(key))


async def find_key_by_hash(conn: AsyncConnection, key_hash: str) -> KeyRecord | None:
    return _key_record((await conn.execute(_by_hash(key_hash))).first())


def find_key_by_hash_sync(conn: sa.Connection, key_hash: str) -> KeyRecord | None:
    """``find_key_by_hash`` for ``Database.run_read``: the whole read in one thread hop."""
    return _key_record(conn.execute(_by_hash(key_hash)).first())


def _by_hash(key_hash: str) -> sa.Select[Any]:
    return sa.select(api_keys).where(api_keys.c.key_hash == key_hash)


def _key_record(row: sa.Row[Any] | None) -> KeyRecord | None:
    if row is None:
        return None
    return KeyRecord(row.id, row.organization_id, row.inbox_id, row.permissions, row.expires_at)


async def list_keys(conn: AsyncConnection, organization_id: str, inbox_id: str | None) -> list[schemas.ApiKey]:
    query = sa.select(api_keys).where(api_keys.c.organization_id == organization_id)
    if inbox_id is not None:
        query = query.where(api_keys.c.inbox_id == inbox_id)
    rows = (await conn.execute(query.order_by(api_keys.c.id.desc()))).all()
    return [_api_key(r) for r in rows]


async def get_key(conn: AsyncConnection, organization_id: str, key_id: str) -> schemas.ApiKey | None:
    row = (
        await conn.execute(
            sa.select(api_keys).where(api_keys.c.organization_id == organization_id, api_keys.c.id == key_id)
        )
    ).first()
    return _api_key(row) if row else None


async def delete_key(conn: AsyncConnection, organization_id: str, key_id: str) -> bool:
    result = await conn.execute(
        api_keys.delete().where(api_keys.c.organization_id == organization_id, api_keys.c.id == key_id)
    )
    return bool(result.rowcount)
