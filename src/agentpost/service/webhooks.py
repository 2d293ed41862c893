"""Webhook use cases: subscribe (secret shown on create), list, get, update, delete, headers, replay."""

from __future__ import annotations

import base64
import json
import re
import secrets
from datetime import UTC, datetime
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
        # notify/webhooks.py: a webhook was disabled after a run of failed deliveries.
        "webhook.disabled",
    }
)

# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Hop-by-hop fields (RFC 9110 §7.6.1) and fields the delivery itself sets: a custom header must
# not change how the request is framed or routed, nor forge its signature.
_RESERVED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "expect",
    }
)
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
# Events queued by one replay call; a wider range is replayed in several calls.
REPLAY_LIMIT = 10_000


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
    if len(headers) > MAX_HEADERS:
        raise Invalid(f"at most {MAX_HEADERS} headers", [{"path": "headers", "message": f"at most {MAX_HEADERS}"}])
    for name, value in headers.items():
        path = f"headers.{name}"
        if not _TOKEN.match(name):
            raise Invalid(f"header name {name!r} is not valid", [{"path": path, "message": "an RFC 9110 token"}])
        lowered = name.lower()
        if lowered in _RESERVED or lowered.startswith(("webhook-", "svix-")):
            raise Invalid(f"header {name!r} is reserved", [{"path": path, "message": "reserved header"}])
        # CR/LF would let a value start a new header line (header injection); NUL is never valid.
        if any(c in value for c in "\r\n\0") or len(value) > MAX_HEADER_VALUE:
            raise Invalid(
                f"header {name!r} has an invalid value",
                [{"path": path, "message": f"no CR, LF or NUL; at most {MAX_HEADER_VALUE} characters"}],
            )
    lowered_names = [n.lower() for n in headers]
    if len(set(lowered_names)) != len(lowered_names):
        raise Invalid("duplicate header names", [{"path": "headers", "message": "names are case-insensitive"}])
    return headers


def _owned_by(row: Any, inbox_id: str) -> bool:
    """Whether the webhook is scoped to exactly this inbox (created through it, or filtered to it)."""
    inbox_id = inbox_id.lower()
    return bool(row.inbox_id == inbox_id or (row.inbox_id is None and row.inbox_ids == [inbox_id]))


def _to_schema(ctx: Context, row: Any) -> schemas.Webhook:
    return schemas.Webhook(
        webhook_id=row.id,
        url=row.url,
        event_types=row.event_types,
        inbox_ids=row.inbox_ids,
        secret=ctx.sealer.unseal(row.secret_enc),
        inbox_id=row.inbox_id,
        enabled=row.enabled,
        client_id=row.client_id,
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


async def create(
    ctx: Context, who: Principal, req: schemas.CreateWebhook, inbox_id: str | None = None
) -> schemas.Webhook:
    """Subscribe; ``inbox_id`` (the inbox route) or an inbox-scoped key fixes it to one inbox."""
    who.require("webhook_create")
    url = _check_url(req.url)
    types = _check_types(req.event_types)
    inbox_ids = sorted({i.lower() for i in req.inbox_ids}) if req.inbox_ids else None
    owner = inbox_id.lower() if inbox_id is not None else who.inbox_id
    if owner is not None:
        who.check_inbox(owner)
        if inbox_ids and inbox_ids != [owner]:
            raise NotFound("inbox not found")
        inbox_ids = [owner]
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
            inbox_id=owner,
        )
        row = await webhook_store.get_row(conn, who.organization_id, webhook_id)
    return _to_schema(ctx, row)


async def _row(ctx: Context, who: Principal, webhook_id: str, inbox_id: str | None = None) -> Any:
    async with ctx.db.read() as conn:
        row = await webhook_store.get_row(conn, who.organization_id, webhook_id)
    if row is None or (who.inbox_id is not None and not _owned_by(row, who.inbox_id)):
        raise NotFound("webhook not found")
    if inbox_id is not None and not _owned_by(row, inbox_id):
        raise NotFound("webhook not found")
    return row


async def get(ctx: Context, who: Principal, webhook_id: str, inbox_id: str | None = None) -> schemas.Webhook:
    who.require("webhook_read")
    return _to_schema(ctx, await _row(ctx, who, webhook_id, inbox_id))


async def list_(ctx: Context, who: Principal, limit: int | None, page_token: str | None) -> schemas.ListWebhooks:
    who.require("webhook_read")
    n = clamp_limit(limit)
    async with ctx.db.read() as conn:
        rows = await webhook_store.list_rows(conn, who.organization_id, n, decode_token(page_token))
    if who.inbox_id is not None:
        rows = [r for r in rows if _owned_by(r, who.inbox_id)]
    more = len(rows) > n
    rows = rows[:n]
    return schemas.ListWebhooks(
        count=len(rows),
        limit=n,
        next_page_token=encode_token(rows[-1].id) if more else None,
        webhooks=[_to_schema(ctx, r) for r in rows],
    )


async def update(
    ctx: Context, who: Principal, webhook_id: str, req: schemas.UpdateWebhook, inbox_id: str | None = None
) -> schemas.Webhook:
    who.require("webhook_update")
    row = await _row(ctx, who, webhook_id, inbox_id)
    values: dict[str, Any] = {}
    if req.url is not None:
        values["url"] = _check_url(req.url)
    if req.event_types is not None:
        values["event_types"] = _check_types(req.event_types)
    if req.enabled is not None:
        values["enabled"] = req.enabled
        if req.enabled:
            # Re-enabled: a fresh run, so one more failure does not disable it again at once.
            values.update(consecutive_failures=0, disabled_reason=None)
    if req.add_inbox_ids or req.remove_inbox_ids:
        if who.inbox_id is not None or row.inbox_id is not None:
            # An inbox webhook stays fixed to its inbox (the SDK's UpdateInboxWebhookRequest).
            raise Invalid(
                "an inbox webhook's inboxes cannot change",
                [{"path": "add_inbox_ids", "message": "not accepted for an inbox webhook"}],
            )
        current = set(row.inbox_ids or [])
        current |= {i.lower() for i in req.add_inbox_ids or []}
        current -= {i.lower() for i in req.remove_inbox_ids or []}
        values["inbox_ids"] = sorted(current) or None
    async with ctx.db.write() as conn:
        if values:
            await webhook_store.update(conn, row.id, **values)
        row = await webhook_store.get_row(conn, who.organization_id, row.id)
    return _to_schema(ctx, row)


async def delete(ctx: Context, who: Principal, webhook_id: str, inbox_id: str | None = None) -> None:
    who.require("webhook_delete")
    row = await _row(ctx, who, webhook_id, inbox_id)
    async with ctx.db.write() as conn:
        await webhook_store.delete(conn, row.id)


async def header_names(ctx: Context, who: Principal, webhook_id: str, inbox_id: str | None = None) -> list[str]:
    """Custom header values are write-only; only their names are readable."""
    who.require("webhook_read")
    row = await _row(ctx, who, webhook_id, inbox_id)
    return sorted(json.loads(ctx.sealer.unseal(row.headers_enc)).keys()) if row.headers_enc else []


async def update_headers(
    ctx: Context,
    who: Principal,
    webhook_id: str,
    headers: dict[str, str] | None,
    remove: list[str] | None,
    inbox_id: str | None = None,
) -> list[str]:
    who.require("webhook_update")
    if not headers and not remove:
        raise Invalid("nothing to change", [{"path": "headers", "message": "give headers or remove_headers"}])
    new = _check_headers(headers or {})
    removed = {name.lower() for name in remove or []}
    if removed & {name.lower() for name in new}:
        raise Invalid(
            "a header cannot be set and removed in one request",
            [{"path": "remove_headers", "message": "also in headers"}],
        )
    row = await _row(ctx, who, webhook_id, inbox_id)
    current: dict[str, str] = json.loads(ctx.sealer.unseal(row.headers_enc)) if row.headers_enc else {}
    # Names are case-insensitive (RFC 9110 §5.1): setting X-Token replaces x-token.
    replaced = removed | {name.lower() for name in new}
    current = {name: value for name, value in current.items() if name.lower() not in replaced}
    current.update(new)
    _check_headers(current)
    async with ctx.db.write() as conn:
        await webhook_store.update(conn, row.id, headers_enc=ctx.sealer.seal(json.dumps(current)) if current else None)
    return sorted(current)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def replay(
    ctx: Context, who: Principal, webhook_id: str, req: schemas.ReplayWebhook, inbox_id: str | None = None
) -> schemas.WebhookReplay:
    """Deliver again the committed events of [after, before) this webhook subscribes to."""
    who.require("webhook_update")
    after, before = _aware(req.after), _aware(req.before)
    if after >= before:
        raise Invalid("after must be earlier than before", [{"path": "after", "message": "earlier than before"}])
    row = await _row(ctx, who, webhook_id, inbox_id)
    async with ctx.db.write() as conn:
        count = await webhook_store.replay(conn, row, after, before, REPLAY_LIMIT)
    ctx.bus.published()  # wake the worker (in whichever process runs it) for the new deliveries
    return schemas.WebhookReplay(webhook_id=row.id, count=count)
