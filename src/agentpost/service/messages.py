"""Sending use cases: send, reply, reply-all, forward; each goes through outbound.submit once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

from agentpost import schemas
from agentpost.errors import Conflict, Invalid, NotFound
from agentpost.model import new_id, utcnow
from agentpost.outbound.submit import Submission, submit
from agentpost.proto import mime
from agentpost.proto.address import Address, AddressError, parse_address
from agentpost.proto.compose import ComposeError, Draft, OutgoingAttachment
from agentpost.service import domains as domain_service
from agentpost.service import drafts as draft_service  # a cycle: drafts sends through _submit
from agentpost.service import guardrails, sending
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.service.mail import clean_labels, owned_inbox
from agentpost.service.unsubscribe import address_tokens, with_list_unsubscribe
from agentpost.store import events as event_store
from agentpost.store import idempotency
from agentpost.store import messages as message_store
from agentpost.store import queue as queue_store
from agentpost.store import suppressions as suppression_store

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024

# What a send-like call answers: the message sent, or the draft it became when the inbox
# requires approval (HTTP 202).
Sent = schemas.SendMessageResponse | schemas.PendingApproval


def _addresses(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _attachments(items: list[schemas.SendAttachment] | None) -> list[OutgoingAttachment]:
    out: list[OutgoingAttachment] = []
    for index, item in enumerate(items or []):
        if item.url is not None:
            raise Invalid(
                "attachments by url are not supported; send base64 content",
                [{"path": f"attachments[{index}].url", "message": "not supported"}],
            )
        try:
            content = base64.b64decode(item.content or "", validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(
                "attachment content is not valid base64",
                [{"path": f"attachments[{index}].content", "message": "base64"}],
            ) from None
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise Invalid("attachment too large", [{"path": f"attachments[{index}].content", "message": "too large"}])
        out.append(
            OutgoingAttachment(
                content=content,
                filename=item.filename,
                content_type=item.content_type,
                disposition=item.content_disposition or "attachment",
                content_id=item.content_id,
            )
        )
    return out


def _request_hash(kind: str, inbox_id: str, target: str | None, req: schemas.SendMessage, key: str | None) -> str:
    """What an Idempotency-Key is bound to; only computed when a key is given (it serialises the
    whole request, attachments included)."""
    if key is None:
        return ""
    body = json.dumps([kind, inbox_id.lower(), target, req.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


async def _original(ctx: Context, inbox_id: str, message_id: str) -> Any:
    async with ctx.db.read() as conn:
        row = await message_store.get_row(conn, inbox_id.lower(), message_id)
    if row is None:
        raise NotFound("message not found")
    return row


async def _submit(
    ctx: Context,
    who: Principal,
    inbox_id: str,
    draft: Draft,
    labels: list[str],
    idempotency_key: str | None,
    request_hash: str,
    *,
    review: bool = True,
) -> Sent:
    """The one path of every send-like call. ``draft.header_from`` is set here, from the inbox.
    ``review=False``: service/drafts.py has already applied the approval guardrail (a draft send)."""
    who.check_inbox(inbox_id)
    if idempotency_key is not None:
        if not idempotency_key or len(idempotency_key) > 255:
            raise Invalid(
                "Idempotency-Key must be 1-255 characters", [{"path": "Idempotency-Key", "message": "length"}]
            )
        async with ctx.db.read() as conn:
            found = await idempotency.find(conn, who.organization_id, idempotency_key)
        if found is not None:
            if found[0] != request_hash:
                raise Conflict("Idempotency-Key was used with a different request")
            if "draft_id" in found[1]:  # the first call was held for approval
                return schemas.PendingApproval(**found[1])
            return schemas.SendMessageResponse(**found[1])
    recipients = _recipients(draft)
    # Guardrails (service/guardrails.py): the replied-to message and the caps to count are read
    # with the sending facts, in the same transaction.
    replying_to = await guardrails.replying_to(ctx, inbox_id, draft.in_reply_to)
    caps = guardrails.caps_for(replying_to.thread_id if replying_to is not None else None)
    facts = await sending.facts(ctx, inbox_id, [address.key for _, address in recipients], caps)
    if facts.sender is None or facts.sender.inbox.organization_id != who.organization_id:
        raise NotFound("inbox not found")
    inbox = facts.sender.inbox
    # Send lists, default deny, loop protection, send caps (403 / 429).
    guardrails.check_send(facts, [address.key for _, address in recipients], replying_to, guardrails.now_ms())
    # Human approval (service/drafts.py owns the rule and the held draft); after the guardrails,
    # so what no approver could send anyway is refused now rather than held.
    if review and draft_service.needs_approval(inbox, who):
        held = await draft_service.hold(ctx, who, inbox.id, draft, labels)
        if idempotency_key is not None:
            async with ctx.db.write() as conn:
                await idempotency.record(conn, who.organization_id, idempotency_key, request_hash, held.model_dump())
        return held
    if facts.sender.domain is None:
        raise Invalid("the inbox's domain is no longer hosted", [{"path": "inbox_id", "message": "domain removed"}])
    domain_row = facts.sender.domain
    domain = str(domain_row.domain)
    local: list[str] = []
    remote: list[str] = []
    for path, address in recipients:
        if not facts.receiving.get(address.key.rpartition("@")[2]):
            remote.append(address.addr_spec)
        elif address.key in facts.inboxes:
            local.append(address.addr_spec)
        else:
            raise Invalid(f"no inbox {address.key} here", [{"path": path, "message": "no such inbox"}])
    signer = await domain_service.signer(ctx, domain_row.id, domain, facts.sender.keys)
    blocked = facts.suppressed
    # A suppressed address (hard bounce, complaint, unsubscribe) is never mailed again until it
    # is reactivated: it is dropped from the envelope (the headers still name it) and reported
    # in a message.rejected event; a send with nobody left is refused.
    local = [a for a in local if a.lower() not in blocked]
    remote = [a for a in remote if a.lower() not in blocked]
    if not local and not remote:
        listed = ", ".join(sorted(blocked))
        raise Invalid(
            f"every recipient is suppressed (reactivate with DELETE /v0/suppressions/{{address}}): {listed}",
            [{"path": "to", "message": f"suppressed: {listed}"}],
        )
    pk = new_id("msg_")
    draft = replace(draft, header_from=_from(inbox))
    draft = with_list_unsubscribe(ctx, draft, pk, domain, inbox.id, local + remote)
    # VERP (a per-message envelope sender) matches a bounce that arrives later to this message.
    mail_from = address_tokens(ctx.sealer).verp(pk, domain) if remote else inbox.id
    try:
        submitted = await submit(
            ctx.db,
            Submission(who.organization_id, inbox.id, mail_from, domain, draft, labels, pk),
            signer,
            remote,
            timedelta(seconds=ctx.outbound_lifetime),
            ctx.commit_sent,
            ctx.outbound.lease() if remote else None,
        )
    except ComposeError as exc:
        raise Invalid(str(exc), [{"path": exc.field, "message": str(exc)}]) from None
    if submitted.leased:
        # Delivered by this process's worker from memory: no claim transaction reads it back.
        ctx.outbound.take(submitted.leased, submitted.raw)
    elif remote:
        ctx.outbound.wake()
    if blocked:
        await _rejected(ctx, who.organization_id, inbox.id, submitted.thread_id, submitted.message_id, blocked)
    if local and ctx.deliver_local is not None:
        # Hosted recipients get the signed message through the inbound pipeline, no network.
        await ctx.deliver_local(inbox.id, local, submitted.raw)
    response = schemas.SendMessageResponse(message_id=submitted.message_id, thread_id=submitted.thread_id)
    if idempotency_key is not None:
        async with ctx.db.write() as conn:
            await idempotency.record(conn, who.organization_id, idempotency_key, request_hash, response.model_dump())
    return response


async def _rejected(
    ctx: Context, organization_id: str, inbox_id: str, thread_id: str, message_id: str, blocked: set[str]
) -> None:
    """message.rejected for the suppressed recipients dropped from a send."""
    payload = {
        "reject": {
            "inbox_id": inbox_id,
            "thread_id": thread_id,
            "message_id": message_id,
            "timestamp": utcnow().isoformat(),
            "recipients": sorted(blocked),
            "reason": "suppressed",
        }
    }
    async with ctx.db.write() as conn:
        await event_store.append(conn, organization_id, inbox_id, "message.rejected", payload)
    ctx.bus.published()


def _recipients(draft: Draft) -> list[tuple[str, Address]]:
    """Every envelope recipient once (To, Cc, Bcc), with the request path that named it."""
    found: list[tuple[str, Address]] = []
    seen: set[str] = set()
    fields = [
        (f"{name}[{i}]", value)
        for name, values in (("to", draft.to), ("cc", draft.cc), ("bcc", draft.bcc))
        for i, value in enumerate(values)
    ]
    for path, value in fields:
        try:
            address = parse_address(value)
        except AddressError as exc:
            raise Invalid(str(exc), [{"path": path, "message": str(exc)}]) from None
        if address.key not in seen:
            seen.add(address.key)
            found.append((path, address))
    if not found:
        raise Invalid("at least one recipient is required", [{"path": "to", "message": "required"}])
    return found


def _from(inbox: Any) -> str:
    return f"{inbox.display_name} <{inbox.email}>" if inbox.display_name else str(inbox.email)


async def send(
    ctx: Context, who: Principal, inbox_id: str, req: schemas.SendMessage, idempotency_key: str | None
) -> Sent:
    who.require("message_send")
    draft = Draft(
        header_from="",  # set from the inbox in _submit
        to=_addresses(req.to),
        cc=_addresses(req.cc),
        bcc=_addresses(req.bcc),
        reply_to=_addresses(req.reply_to),
        subject=req.subject,
        text=req.text,
        html=req.html,
        attachments=_attachments(req.attachments),
        headers=dict(req.headers or {}),
    )
    labels = clean_labels(req.labels, "labels")
    return await _submit(
        ctx, who, inbox_id, draft, labels, idempotency_key, _request_hash("send", inbox_id, None, req, idempotency_key)
    )


def _prefixed(prefix: str, subject: str | None) -> str:
    subject = subject or ""
    return subject if subject.lower().startswith(prefix.lower()) else f"{prefix} {subject}".strip()


async def reply(
    ctx: Context,
    who: Principal,
    inbox_id: str,
    message_id: str,
    req: schemas.ReplyMessage,
    reply_all: bool,
    idempotency_key: str | None,
) -> Sent:
    who.require("message_send")
    draft = await compose_reply(ctx, who, inbox_id, message_id, req, reply_all)
    labels = clean_labels(req.labels, "labels")
    kind = "reply-all" if reply_all or req.reply_all else "reply"
    return await _submit(
        ctx,
        who,
        inbox_id,
        draft,
        labels,
        idempotency_key,
        _request_hash(kind, inbox_id, draft.in_reply_to, req, idempotency_key),
    )


async def compose_reply(
    ctx: Context, who: Principal, inbox_id: str, message_id: str, req: schemas.ReplyMessage, reply_all: bool
) -> Draft:
    """The reply to ``message_id``: recipients, subject and threading derived from it (also a reply draft's)."""
    inbox = await owned_inbox(ctx, who, inbox_id)
    original = await _original(ctx, inbox_id, message_id)
    reply_all = reply_all or bool(req.reply_all)
    own = str(inbox.email).lower()
    if original.direction == "sent":
        target = list(original.to or [])
    else:
        target = list(original.reply_to or []) or [original.header_from]
    to = _addresses(req.to) or target
    cc = _addresses(req.cc)
    if reply_all and not req.cc:
        # RFC 5322 §3.6.3: reply-all goes to the author and every other recipient, not to us.
        chosen = {_key(a) for a in to}
        cc = [a for a in [*(original.to or []), *(original.cc or [])] if _key(a) not in chosen | {own}]
    to = [a for a in to if _key(a) != own] or to
    references = [*(original.references or []), original.message_id]
    draft = Draft(
        header_from=_from(inbox),
        to=to,
        cc=cc,
        bcc=_addresses(req.bcc),
        reply_to=_addresses(req.reply_to),
        subject=_prefixed("Re:", original.subject),
        text=req.text,
        html=req.html,
        attachments=_attachments(req.attachments),
        headers=dict(req.headers or {}),
        in_reply_to=original.message_id,
        references=references[-50:],
    )
    return draft


async def forward(
    ctx: Context,
    who: Principal,
    inbox_id: str,
    message_id: str,
    req: schemas.SendMessage,
    idempotency_key: str | None,
) -> Sent:
    who.require("message_send")
    draft, original_id = await compose_forward(ctx, who, inbox_id, message_id, req)
    labels = clean_labels(req.labels, "labels")
    return await _submit(
        ctx,
        who,
        inbox_id,
        draft,
        labels,
        idempotency_key,
        _request_hash("forward", inbox_id, original_id, req, idempotency_key),
    )


async def compose_forward(
    ctx: Context, who: Principal, inbox_id: str, message_id: str, req: schemas.SendMessage
) -> tuple[Draft, str]:
    """The forward of ``message_id`` (its text quoted, its attachments kept) and its Message-ID."""
    inbox = await owned_inbox(ctx, who, inbox_id)
    original = await _original(ctx, inbox_id, message_id)
    async with ctx.db.read() as conn:
        raw = await message_store.raw(conn, original.blob_id)
    parsed = mime.parse(raw or b"")
    quoted = (
        "---------- Forwarded message ---------\n"
        f"From: {original.header_from}\nDate: {original.timestamp:%a, %d %b %Y %H:%M:%S %z}\n"
        f"Subject: {original.subject or ''}\nTo: {', '.join(original.to or [])}\n\n{original.text or ''}"
    )
    attachments = [
        OutgoingAttachment(a.content, a.filename, a.content_type, a.disposition, a.content_id)
        for a in parsed.attachments
    ]
    draft = Draft(
        header_from=_from(inbox),
        to=_addresses(req.to),
        cc=_addresses(req.cc),
        bcc=_addresses(req.bcc),
        reply_to=_addresses(req.reply_to),
        subject=req.subject or _prefixed("Fwd:", original.subject),
        text=f"{req.text}\n\n{quoted}" if req.text else quoted,
        html=req.html,
        attachments=attachments + _attachments(req.attachments),
        headers=dict(req.headers or {}),
    )
    return draft, str(original.message_id)


def _key(value: str) -> str:
    try:
        return parse_address(value).key
    except AddressError:
        return value.lower()


async def deliveries(ctx: Context, who: Principal, inbox_id: str, message_id: str) -> dict[str, Any]:
    """Every delivery attempt of a sent message, with the remote host and the full SMTP reply."""
    who.require("message_read")
    await owned_inbox(ctx, who, inbox_id)
    original = await _original(ctx, inbox_id, message_id)
    async with ctx.db.read() as conn:
        rows = await queue_store.attempts_for(conn, original.id)
    items = [
        {
            "recipient": r.rcpt,
            "outcome": r.outcome,
            "remote_host": r.remote_host,
            "remote_ip": r.remote_ip,
            "code": r.code,
            "enhanced": r.enhanced,
            "reply": r.reply,
            "tls_version": r.tls_version,
            "tls_verified": r.tls_verified,
            "duration_ms": r.duration_ms,
            "details": r.details,
            "timestamp": r.created_at.isoformat(),
        }
        for r in rows
    ]
    return {"message_id": original.message_id, "count": len(items), "deliveries": items}


def _suppression(r: Any) -> dict[str, Any]:
    return {
        "address": r.address,
        "inbox_id": r.scope or None,
        "reason": r.reason,
        "reply": r.reply,
        "created_at": r.created_at.isoformat(),
    }


async def list_suppressions(ctx: Context, who: Principal) -> dict[str, Any]:
    who.require("list_entry_read")
    async with ctx.db.read() as conn:
        rows = await suppression_store.list_rows(conn, who.organization_id, who.inbox_id)
    items = [_suppression(r) for r in rows]
    return {"count": len(items), "suppressions": items}


async def get_suppression(ctx: Context, who: Principal, address: str) -> dict[str, Any]:
    """Why an address is suppressed (each scope it is suppressed in, with the reply that caused it)."""
    who.require("list_entry_read")
    try:
        key = parse_address(address).key
    except AddressError as exc:
        raise Invalid(str(exc), [{"path": "address", "message": str(exc)}]) from None
    async with ctx.db.read() as conn:
        rows = await suppression_store.entries(conn, who.organization_id, key, who.inbox_id)
    if not rows:
        raise NotFound("address is not suppressed")
    return {"address": key, "count": len(rows), "suppressions": [_suppression(r) for r in rows]}


async def add_suppression(ctx: Context, who: Principal, address: str, inbox_id: str | None) -> dict[str, Any]:
    who.require("list_entry_create")
    scope = (inbox_id or who.inbox_id or "").lower()
    if scope:
        await owned_inbox(ctx, who, scope)
    try:
        key = parse_address(address).key
    except AddressError as exc:
        raise Invalid(str(exc), [{"path": "address", "message": str(exc)}]) from None
    async with ctx.db.write() as conn:
        await suppression_store.add(conn, who.organization_id, scope, key, "manual", None)
    return {"address": key, "inbox_id": scope or None, "reason": "manual"}


async def remove_suppression(ctx: Context, who: Principal, address: str) -> None:
    """Reactivate an address (for the key's inbox, or organisation-wide for an org key)."""
    who.require("list_entry_delete")
    async with ctx.db.write() as conn:
        removed = await suppression_store.remove(conn, who.organization_id, address, who.inbox_id)
    if not removed:
        raise NotFound("address is not suppressed")
