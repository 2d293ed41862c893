"""Webhook use cases: subscribe (secret shown on create), list, get, update, delete, headers."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from agentpost import schemas
from agentpost.errors import Invalid, NotFound
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.store import inboxes as inbox_store
from agentpost.store import webhooks as webhook_store
from agentpost.store.pages import clamp_limit, decode_token, encode_token

EVENT_TYPES = frozenset(
    {
        "message.received",
        "message.received.spam",
        "message.received.blocked",
        "message.received.unauthenticated",
        "message.sent",
        "message.delivered",
        "message.delayed",
        "message.bounced",
        "message.complained",
        "message.rejected",
        "message.suppressed",
        "domain.verified",
        # service/drafts.py: scheduled and approved sends, and the approval decisions.
        "draft.sent",
        "draft.pending_approval",
        "draft.approved",
        "draft.rejected",
    }
)


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url must be an absolute http(s) URL", [{"path": "url", "message": "absolute http(s) URL"}])
    if any(c in url for c in "\r\n\t "):
        raise Invalid("url contains whitespace", [{"path": "url", "message": "no whitespace"}])
    return url


def _check_types(values: list[str]) -> list[str]:
    if not values:
        raise Invalid("event_types must not be empty", [{"path": "event_types", "message": "at least one"}])
    unknown = sorted(set(values) - EVENT_TYPES)
    if unknown:
        raise Invalid(
            f"unknown event types: {', '.join(unknown)}",
            [{"path": "event_types", "message": f"one of {', '.join(sorted(EVENT_TYPES))}"}],
        )
    return sorted(set(values))


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
            raise Invalid(f"header {name!r} is not valid", [{"path": "headers", "message": "no CR/LF or colon"}])
        if name.lower().startswith(("webhook-", "svix-")) or name.lower() in ("content-type", "host", "content-length"):
            raise Invalid(f"header {name!r} is reserved", [{"path": "headers", "message": "reserved header"}])
    return headers


def _to_schema(ctx: Context, row: Any) -> schemas.Webhook:
    return schemas.Webhook(
        webhook_id=row.id,
        url=row.url,
        event_types=row.event_types,
        inbox_ids=row.inbox_ids,
        secret=ctx.sealer.unseal(row.secret_enc),
        enabled=row.enabled,
        client_id=row.client_id,
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


async def create(ctx: Context, who: Principal, req: schemas.CreateWebhook) -> schemas.Webhook:
    who.require("webhook_create")
    url = _check_url(req.url)
    types = _check_types(req.event_types)
    inbox_ids = [i.lower() for i in req.inbox_ids] if req.inbox_ids else None
    if who.inbox_id is not None:
        if inbox_ids and inbox_ids != [who.inbox_id]:
            raise NotFound("inbox not found")
        inbox_ids = [who.inbox_id]
    headers = _check_headers(req.headers or {})
    async with ctx.db.write() as conn:
        if req.client_id:
            existing = await webhook_store.by_client_id(conn, who.organization_id, req.client_id)
            if existing is not None:
                return _to_schema(ctx, existing)
        for inbox_id in inbox_ids or []:
            row = await inbox_store.get_row(conn, inbox_id)
            if row is None or row.organization_id != who.organization_id:
                raise NotFound(f"inbox {inbox_id} not found")
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        webhook_id = await webhook_store.create(
            conn,
            organization_id=who.organization_id,
            url=url,
            event_types=types,
            inbox_ids=inbox_ids,
            secret_enc=ctx.sealer.seal(secret),
            headers_enc=ctx.sealer.seal(json.dumps(headers)) if headers else None,
            enabled=True,
            client_id=req.client_id,
        )
        row = await webhook_store.get_row(conn, who.organization_id, webhook_id)
    return _to_schema(ctx, row)


async def _row(ctx: Context, who: Principal, webhook_id: str) -> Any:
    async with ctx.db.read() as conn:
        row = await webhook_store.get_row(conn, who.organization_id, webhook_id)
    if row is None or (who.inbox_id is not None and row.inbox_ids != [who.inbox_id]):
        raise NotFound("webhook not found")
    return row


async def get(ctx: Context, who: Principal, webhook_id: str) -> schemas.Webhook:
    who.require("webhook_read")
    return _to_schema(ctx, await _row(ctx, who, webhook_id))


async def list_(ctx: Context, who: Principal, limit: int | None, page_token: str | None) -> schemas.ListWebhooks:
    who.require("webhook_read")
    n = clamp_limit(limit)
    async with ctx.db.read() as conn:
        rows = await webhook_store.list_rows(conn, who.organization_id, n, decode_token(page_token))
    if who.inbox_id is not None:
        rows = [r for r in rows if r.inbox_ids == [who.inbox_id]]
    more = len(rows) > n
    rows = rows[:n]
    return schemas.ListWebhooks(
        count=len(rows),
        limit=n,
        next_page_token=encode_token(rows[-1].id) if more else None,
        webhooks=[_to_schema(ctx, r) for r in rows],
    )


async def update(ctx: Context, who: Principal, webhook_id: str, req: schemas.UpdateWebhook) -> schemas.Webhook:
    who.require("webhook_update")
    row = await _row(ctx, who, webhook_id)
    values: dict[str, Any] = {}
    if req.url is not None:
        values["url"] = _check_url(req.url)
    if req.event_types is not None:
        values["event_types"] = _check_types(req.event_types)
    if req.enabled is not None:
        values["enabled"] = req.enabled
    if req.add_inbox_ids or req.remove_inbox_ids:
        if who.inbox_id is not None:
            raise NotFound("inbox not found")
        current = set(row.inbox_ids or [])
        current |= {i.lower() for i in req.add_inbox_ids or []}
        current -= {i.lower() for i in req.remove_inbox_ids or []}
        values["inbox_ids"] = sorted(current) or None
    async with ctx.db.write() as conn:
        if values:
            await webhook_store.update(conn, row.id, **values)
        row = await webhook_store.get_row(conn, who.organization_id, row.id)
    return _to_schema(ctx, row)


async def delete(ctx: Context, who: Principal, webhook_id: str) -> None:
    who.require("webhook_delete")
    row = await _row(ctx, who, webhook_id)
    async with ctx.db.write() as conn:
        await webhook_store.delete(conn, row.id)


async def header_names(ctx: Context, who: Principal, webhook_id: str) -> list[str]:
    """Custom header values are write-only; only their names are readable."""
    who.require("webhook_read")
    row = await _row(ctx, who, webhook_id)
    return sorted(json.loads(ctx.sealer.unseal(row.headers_enc)).keys()) if row.headers_enc else []


async def update_headers(
    ctx: Context, who: Principal, webhook_id: str, headers: dict[str, str] | None, remove: list[str] | None
) -> list[str]:
    who.require("webhook_update")
    row = await _row(ctx, who, webhook_id)
    current: dict[str, str] = json.loads(ctx.sealer.unseal(row.headers_enc)) if row.headers_enc else {}
    current.update(_check_headers(headers or {}))
    for name in remove or []:
        current.pop(name, None)
    async with ctx.db.write() as conn:
        await webhook_store.update(conn, row.id, headers_enc=ctx.sealer.seal(json.dumps(current)) if current else None)
    return sorted(current)
