"""Inbox use cases: create (idempotent by client_id), get, list, update, delete."""

from __future__ import annotations

import re
import secrets

from agentpost import schemas
from agentpost.errors import Conflict, Invalid, NotFound
from agentpost.proto.address import AddressError, parse_address
from agentpost.service import guardrails
from agentpost.service.auth import Principal, forget_keys
from agentpost.service.context import Context
from agentpost.store import domains as domain_store
from agentpost.store import inboxes as inbox_store
from agentpost.store import lists as list_store
from agentpost.store import messages as message_store
from agentpost.store.pages import clamp_limit, decode_token, encode_token

_USERNAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


async def create(ctx: Context, who: Principal, req: schemas.CreateInbox) -> tuple[schemas.Inbox, bool]:
    who.require_org()
    who.require("inbox_create")
    async with ctx.db.write() as conn:
        if req.client_id:
            existing = await inbox_store.by_client_id(conn, who.organization_id, req.client_id)
            if existing is not None:
                return inbox_store.to_inbox(existing), False
        domain_name = (req.domain or "").strip().lower()
        if not domain_name:
            first = await domain_store.first(conn, who.organization_id)
            if first is None:
                raise Invalid(
                    "no domain given and the organisation has no domain",
                    [{"path": "domain", "message": "add a domain first (POST /v0/domains), then create inboxes on it"}],
                )
            domain_name = first
        domain_row = await domain_store.get_row(conn, who.organization_id, domain_name)
        if domain_row is None:
            raise Invalid(
                f"domain {domain_name} is not hosted by this organisation",
                [{"path": "domain", "message": "add the domain first (POST /v0/domains)"}],
            )
        username = req.username or ("agent-" + secrets.token_hex(4))
        if not _USERNAME.match(username) or username.startswith(".") or username.endswith(".") or ".." in username:
            raise Invalid("username is not a valid local part", [{"path": "username", "message": "invalid local part"}])
        try:
            address = parse_address(f"{username}@{domain_row.domain}")
        except AddressError as exc:
            raise Invalid(str(exc), [{"path": "username", "message": str(exc)}]) from None
        if await inbox_store.get_row(conn, address.key) is not None:
            raise Conflict(f"inbox {address.key} already exists")
        for label, value in (("display_name", req.display_name),):
            if value and ("\r" in value or "\n" in value):
                raise Invalid(f"{label} contains CR or LF", [{"path": label, "message": "CR/LF not allowed"}])
        row = await inbox_store.create(
            conn,
            who.organization_id,
            address.addr_spec,
            domain_row.domain,
            req.display_name,
            req.client_id,
            req.status or "active",
            req.metadata,
            _auth_policy(None, req.auth_policy),
            send_requires_approval=bool(req.send_requires_approval),
            guardrails=guardrails.settings(None, req),
        )
    ctx.routing_changed()
    return inbox_store.to_inbox(row), True


async def get(ctx: Context, who: Principal, inbox_id: str) -> schemas.Inbox:
    who.check_inbox(inbox_id)
    who.require("inbox_read")
    async with ctx.db.read() as conn:
        row = await inbox_store.get_row(conn, inbox_id)
    if row is None or row.organization_id != who.organization_id:
        raise NotFound("inbox not found")
    return inbox_store.to_inbox(row)


async def list_(ctx: Context, who: Principal, limit: int | None, page_token: str | None) -> schemas.ListInboxes:
    who.require("inbox_read")
    n = clamp_limit(limit)
    async with ctx.db.read() as conn:
        rows = await inbox_store.list_page(conn, who.organization_id, n, decode_token(page_token), who.inbox_id)
    more = len(rows) > n
    rows = rows[:n]
    items = [inbox_store.to_inbox(r) for r in rows]
    return schemas.ListInboxes(
        count=len(items), limit=n, next_page_token=encode_token(rows[-1].id) if more else None, inboxes=items
    )


async def update(ctx: Context, who: Principal, inbox_id: str, req: schemas.UpdateInbox) -> schemas.Inbox:
    who.check_inbox(inbox_id)
    who.require("inbox_update")
    async with ctx.db.write() as conn:
        row = await inbox_store.get_row(conn, inbox_id)
        if row is None or row.organization_id != who.organization_id:
            raise NotFound("inbox not found")
        values: dict[str, object] = {}
        if req.display_name is not None:
            if "\r" in req.display_name or "\n" in req.display_name:
                raise Invalid("display_name contains CR or LF", [{"path": "display_name", "message": "CR/LF"}])
            values["display_name"] = req.display_name
        if req.status is not None:
            values["status"] = req.status
        if req.metadata is not None:
            merged = dict(row.metadata or {})
            for key, value in req.metadata.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            values["metadata"] = merged
        if req.auth_policy is not None:
            values["auth_policy"] = _auth_policy(row.auth_policy, req.auth_policy)
        values.update(guardrails.settings(row, req))
        if req.send_requires_approval is not None:
            # Turning approval off is itself a guardrail change: only an org key may make it.
            who.require_org()
            values["send_requires_approval"] = req.send_requires_approval
        if values:
            await inbox_store.update(conn, row.id, **values)
        row = await inbox_store.get_row(conn, inbox_id)
    ctx.routing_changed()
    return inbox_store.to_inbox(row)


def _auth_policy(stored: dict[str, str] | None, change: schemas.AuthPolicyUpdate | None) -> dict[str, str] | None:
    """The stored ``auth_policy`` after ``change``: the given fields replace, the others stay; None = default."""
    if change is None:
        return stored
    merged = {**(stored or {}), **change.model_dump(exclude_none=True)}
    return merged or None


async def delete(ctx: Context, who: Principal, inbox_id: str) -> None:
    who.check_inbox(inbox_id)
    who.require("inbox_delete")
    async with ctx.db.write() as conn:
        row = await inbox_store.get_row(conn, inbox_id)
        if row is None or row.organization_id != who.organization_id:
            raise NotFound("inbox not found")
        await message_store.delete_inbox_mail(conn, row.id)
        await list_store.remove_inbox(conn, row.organization_id, row.id)
        await inbox_store.delete(conn, row.id)
    ctx.routing_changed()
    forget_keys(ctx)  # keys scoped to the inbox go with it
