"""API key use cases: create (shown once), list, get, delete, who-am-I."""

from __future__ import annotations

from agentpost import schemas
from agentpost.errors import Forbidden, Invalid, NotFound
from agentpost.service.auth import Principal, forget_keys
from agentpost.service.context import Context
from agentpost.store import inboxes as inbox_store
from agentpost.store import orgs


async def create(ctx: Context, who: Principal, req: schemas.CreateApiKey) -> schemas.CreateApiKeyResponse:
    who.require("api_key_create")
    inbox_id = req.inbox_id.lower() if req.inbox_id else who.inbox_id
    if who.inbox_id is not None and inbox_id != who.inbox_id:
        raise Forbidden("an inbox-scoped key can only create keys for its own inbox")
    if req.permissions and who.permissions is not None:
        # A key cannot grant more than it has.
        extra = [p for p, on in req.permissions.items() if on and not who.can(p)]
        if extra:
            raise Forbidden(f"cannot grant permissions this key lacks: {', '.join(sorted(extra))}")
    async with ctx.db.write() as conn:
        if inbox_id is not None:
            row = await inbox_store.get_row(conn, inbox_id)
            if row is None or row.organization_id != who.organization_id:
                raise NotFound("inbox not found")
        name = (req.name or "api key").strip()
        if not name or len(name) > 200:
            raise Invalid("name must be 1-200 characters", [{"path": "name", "message": "1-200 characters"}])
        return await orgs.create_key(conn, who.organization_id, name, inbox_id, req.permissions, req.expires_at)


async def list_(ctx: Context, who: Principal) -> schemas.ListApiKeys:
    who.require("api_key_read")
    async with ctx.db.read() as conn:
        keys = await orgs.list_keys(conn, who.organization_id, who.inbox_id)
    return schemas.ListApiKeys(count=len(keys), api_keys=keys)


async def get(ctx: Context, who: Principal, key_id: str) -> schemas.ApiKey:
    who.require("api_key_read")
    async with ctx.db.read() as conn:
        key = await orgs.get_key(conn, who.organization_id, key_id)
    if key is None or (who.inbox_id is not None and key.inbox_id != who.inbox_id):
        raise NotFound("api key not found")
    return key


async def delete(ctx: Context, who: Principal, key_id: str) -> None:
    who.require("api_key_delete")
    await get(ctx, who, key_id)
    async with ctx.db.write() as conn:
        await orgs.delete_key(conn, who.organization_id, key_id)
    forget_keys(ctx)  # the deleted key stops working now, not when its cache entry ages out


def me(who: Principal) -> schemas.Identity:
    if who.inbox_id is not None:
        return schemas.Identity(
            scope_type="inbox",
            scope_id=who.inbox_id,
            organization_id=who.organization_id,
            inbox_id=who.inbox_id,
            api_key_id=who.api_key_id,
        )
    return schemas.Identity(
        scope_type="organization",
        scope_id=who.organization_id,
        organization_id=who.organization_id,
        api_key_id=who.api_key_id,
    )


async def bootstrap_key(ctx: Context, name: str = "cli") -> schemas.CreateApiKeyResponse:
    """An organisation key for the default organisation (the CLI's `key create`)."""
    async with ctx.db.write() as conn:
        org_id = await orgs.default_organization(conn)
        return await orgs.create_key(conn, org_id, name)


async def operator(ctx: Context) -> Principal:
    """The CLI acts as the default organisation with every permission."""
    async with ctx.db.write() as conn:
        org_id = await orgs.default_organization(conn)
    return Principal(org_id, None, None, None)
