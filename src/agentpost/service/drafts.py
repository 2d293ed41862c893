"""Draft use cases: edit, schedule (send_at) and send drafts, serve their attachments, hold sends for approval.

Every draft leaves through ``messages._submit`` (and so ``outbound.submit``), with the draft id as
its idempotency key: a draft is sent at most once even when the scheduler that took it dies
mid-send and another one takes it over after the lease.

Approval: on an inbox with ``send_requires_approval``, a send, reply, forward or draft send made
with an inbox-scoped key becomes a draft with ``send_status: pending_approval`` (nothing is queued
or delivered); an organisation key approves it (it is sent) or rejects it (it is discarded).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from agentpost import schemas
from agentpost.errors import AgentpostError, Conflict, Invalid, NotFound
from agentpost.model import new_id, utcnow
from agentpost.proto.compose import Draft, OutgoingAttachment
from agentpost.service import messages as message_service
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.service.mail import DOWNLOAD_TTL, Listing, clean_labels, owned_inbox
from agentpost.store import drafts as draft_store
from agentpost.store import events as event_store
from agentpost.store import inboxes as inbox_store
from agentpost.store.pages import clamp_limit, decode_token, encode_token

log = logging.getLogger(__name__)

# How long a taken draft is held by its sender before another may take it over.
LEASE = timedelta(minutes=5)
# The scheduler looks for due drafts this often (seconds): send_at is honoured to about this.
POLL_SECONDS = 1.0
BATCH = 20
# A scheduled send that failed for a reason other than the request (the database, say) is tried again after this.
RETRY_AFTER = timedelta(minutes=1)


def needs_approval(inbox: Any, who: Principal) -> bool:
    """Whether ``who``'s send from ``inbox`` waits for approval: the inbox asks for it and the key
    is scoped to one inbox (approving takes an organisation key, so an org key's send goes out)."""
    return bool(inbox.send_requires_approval) and who.inbox_id is not None


# --------------------------------------------------------------------------- storage shapes


def _stored(items: list[OutgoingAttachment]) -> list[dict[str, Any]]:
    return [
        {
            "attachment_id": new_id("att_"),
            "filename": a.filename,
            "content_type": a.content_type,
            "content_disposition": a.disposition,
            "content_id": a.content_id,
            "size": len(a.content),
            "content": base64.b64encode(a.content).decode(),
        }
        for a in items
    ]


def _outgoing(stored: list[dict[str, Any]] | None) -> list[OutgoingAttachment]:
    return [
        OutgoingAttachment(
            base64.b64decode(a["content"]),
            a.get("filename"),
            a.get("content_type"),
            a.get("content_disposition") or "attachment",
            a.get("content_id"),
        )
        for a in stored or []
    ]


def _list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _content(draft: Draft) -> dict[str, Any]:
    """The columns of a draft row that hold a composed message's content."""
    return {
        "to": list(draft.to),
        "cc": list(draft.cc),
        "bcc": list(draft.bcc),
        "reply_to": list(draft.reply_to),
        "subject": draft.subject,
        "text": draft.text,
        "html": draft.html,
        "attachments": _stored(draft.attachments),
        "headers": dict(draft.headers) or None,
        "in_reply_to": draft.in_reply_to,
        "references": list(draft.references) or None,
    }


async def _event(conn: Any, row: Any, event_type: str, **extra: Any) -> None:
    payload = {"draft": draft_store.to_item(row).model_dump(mode="json", exclude_none=True), **extra}
    await event_store.append(conn, row.organization_id, row.inbox_id, event_type, payload)


# --------------------------------------------------------------------------- held sends


async def hold(ctx: Context, who: Principal, inbox_id: str, draft: Draft, labels: list[str]) -> schemas.PendingApproval:
    """Keep a send as a draft pending approval (called by ``messages._submit``), with its event."""
    async with ctx.db.write() as conn:
        row = await draft_store.create(
            conn,
            id=new_id("drf_"),
            organization_id=who.organization_id,
            inbox_id=inbox_id.lower(),
            labels=labels,
            send_status="pending_approval",
            requested_by=who.api_key_id,
            **_content(draft),
        )
        await _event(conn, row, "draft.pending_approval", requested_by=who.api_key_id)
    ctx.bus.published()
    return schemas.PendingApproval(draft_id=row.id)


# --------------------------------------------------------------------------- CRUD


async def _row(ctx: Context, who: Principal, inbox_id: str | None, draft_id: str) -> Any:
    """The draft row, or NotFound when it is outside the key's scope (or the given inbox)."""
    if inbox_id is not None:
        who.check_inbox(inbox_id)
    async with ctx.db.read() as conn:
        row = await draft_store.get_row(conn, draft_id)
    if not who.owns(row, inbox_id):
        raise NotFound("draft not found")
    return row


def _schedule(send_at: datetime | None) -> dict[str, Any]:
    if send_at is None:
        return {"send_at": None, "send_status": None, "next_attempt_at": None, "send_error": None}
    if send_at.tzinfo is None:
        raise Invalid("send_at needs a time zone", [{"path": "send_at", "message": "e.g. 2026-11-21T12:00:00Z"}])
    return {"send_at": send_at, "send_status": "scheduled", "next_attempt_at": send_at, "send_error": None}


async def create(ctx: Context, who: Principal, inbox_id: str, req: schemas.CreateDraft) -> schemas.Draft:
    who.require("draft_create")
    inbox = await owned_inbox(ctx, who, inbox_id)
    if req.in_reply_to and req.forward_of:
        raise Invalid("in_reply_to and forward_of exclude each other", [{"path": "forward_of", "message": "one"}])
    if req.reply_all and (req.to or req.cc or req.bcc):
        raise Invalid("reply_all derives the recipients: omit to, cc and bcc", [{"path": "to", "message": "omit"}])
    if req.client_id:
        async with ctx.db.read() as conn:
            existing = await draft_store.by_client_id(conn, inbox.id, req.client_id)
        if existing is not None:
            return draft_store.to_draft(existing)
    labels = clean_labels(req.labels, "labels")
    forward_of = None
    subject: str | None = req.subject
    if req.in_reply_to:
        # A reply draft shows what will be sent: recipients, subject and threading from the message.
        who.require("message_read")
        reply = schemas.ReplyMessage(
            to=req.to,
            cc=req.cc,
            bcc=req.bcc,
            reply_to=req.reply_to,
            text=req.text,
            html=req.html,
            attachments=req.attachments,
        )
        draft = await message_service.compose_reply(ctx, who, inbox.id, req.in_reply_to, reply, bool(req.reply_all))
        content = _content(draft)
        if req.subject:
            content["subject"] = req.subject
    else:
        if req.forward_of:
            # The source's body and attachments are merged in when the draft is sent.
            who.require("message_read")
            original = await message_service._original(ctx, inbox.id, req.forward_of)
            forward_of = str(original.message_id)
            subject = req.subject or message_service._prefixed("Fwd:", original.subject)
        draft = Draft(
            header_from="",
            to=_list(req.to),
            cc=_list(req.cc),
            bcc=_list(req.bcc),
            reply_to=_list(req.reply_to),
            subject=subject,
            text=req.text,
            html=req.html,
            attachments=message_service._attachments(req.attachments),
        )
        content = _content(draft)
    async with ctx.db.write() as conn:
        row = await draft_store.create(
            conn,
            id=new_id("drf_"),
            organization_id=who.organization_id,
            inbox_id=inbox.id,
            client_id=req.client_id,
            labels=labels,
            forward_of=forward_of,
            **content,
            **_schedule(req.send_at),
        )
    return draft_store.to_draft(row)


async def attachment(
    ctx: Context, who: Principal, inbox_id: str | None, draft_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    """A draft attachment's metadata and a signed download link (the bytes are kept in the draft row)."""
    who.require("draft_read")
    row = await _row(ctx, who, inbox_id, draft_id)
    meta = next((a for a in row.attachments or [] if a["attachment_id"] == attachment_id), None)
    if meta is None:
        raise NotFound("attachment not found")
    token, expires = ctx.sealer.sign({"k": "draft_att", "d": row.id, "a": attachment_id}, DOWNLOAD_TTL)
    return schemas.AttachmentResponse(
        **{k: v for k, v in meta.items() if k != "content"},
        download_url=f"{ctx.public_url}/v0/downloads/{token}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


def _fields(draft: Draft) -> dict[str, Any]:
    return {name: getattr(draft, name) for name in Draft.__dataclass_fields__}


async def list_(ctx: Context, who: Principal, inbox_id: str | None, q: Listing) -> schemas.ListDrafts:
    """Drafts of one inbox, or of every inbox the key sees (``inbox_id`` None), newest change first."""
    who.require("draft_read")
    scope = who.inbox_id
    if inbox_id is not None:
        scope = (await owned_inbox(ctx, who, inbox_id)).id
    n = clamp_limit(q.limit)
    async with ctx.db.read() as conn:
        rows = await draft_store.list_page(
            conn,
            who.organization_id,
            scope,
            n,
            decode_token(q.page_token),
            labels=q.labels,
            before=q.before,
            since=q.after,
            ascending=q.ascending,
        )
    more = len(rows) > n
    rows = rows[:n]
    return schemas.ListDrafts(
        count=len(rows),
        limit=n,
        next_page_token=encode_token(rows[-1].id) if more else None,
        drafts=[draft_store.to_item(r) for r in rows],
    )


async def get(ctx: Context, who: Principal, inbox_id: str | None, draft_id: str) -> schemas.Draft:
    who.require("draft_read")
    return draft_store.to_draft(await _row(ctx, who, inbox_id, draft_id))


async def update(ctx: Context, who: Principal, inbox_id: str, draft_id: str, req: schemas.UpdateDraft) -> schemas.Draft:
    """Change the given fields (``null`` clears; ``send_at`` schedules, reschedules or unschedules)."""
    who.require("draft_update")
    row = await _row(ctx, who, inbox_id, draft_id)
    if row.send_status == "pending_approval":
        # What an approver approves must be what they saw: a held draft is withdrawn, not edited.
        raise Conflict("the draft is waiting for approval; delete it and send a new one")
    given = req.model_fields_set
    values: dict[str, Any] = {}
    for name in ("to", "cc", "bcc", "reply_to"):
        if name in given:
            values[name] = _list(getattr(req, name))
    for name in ("subject", "text", "html"):
        if name in given:
            values[name] = getattr(req, name)
    if req.add_attachments or req.remove_attachments:
        removed = set(req.remove_attachments or [])
        kept = [a for a in row.attachments or [] if a["attachment_id"] not in removed]
        values["attachments"] = kept + _stored(message_service._attachments(req.add_attachments))
    if req.add_labels or req.remove_labels:
        add = clean_labels(req.add_labels, "add_labels")
        drop = set(clean_labels(req.remove_labels, "remove_labels"))
        labels = [label for label in [*(row.labels or []), *add] if label not in drop]
        values["labels"] = list(dict.fromkeys(labels))
    if "send_at" in given:
        values.update(_schedule(req.send_at))
    async with ctx.db.write() as conn:
        if values and not await draft_store.update(conn, row.id, unless_sending=True, **values):
            raise Conflict("the draft is being sent")
        row = await draft_store.get_row(conn, row.id)
    if row is None:
        raise NotFound("draft not found")
    return draft_store.to_draft(row)


async def delete(ctx: Context, who: Principal, inbox_id: str, draft_id: str) -> None:
    """Discard a draft; a scheduled one is cancelled (unless it is being sent right now: 409)."""
    who.require("draft_delete")
    row = await _row(ctx, who, inbox_id, draft_id)
    async with ctx.db.write() as conn:
        if not await draft_store.delete(conn, row.id, unless_sending=True):
            raise Conflict("the draft is being sent")


# --------------------------------------------------------------------------- sending


async def send(
    ctx: Context, who: Principal, inbox_id: str, draft_id: str, req: schemas.SendDraft
) -> message_service.Sent:
    who.require("draft_send")
    row = await _row(ctx, who, inbox_id, draft_id)
    inbox = await owned_inbox(ctx, who, inbox_id)
    if needs_approval(inbox, who):
        return await _to_approval(ctx, who, row)
    if row.send_status == "pending_approval":
        return await approve(ctx, who, inbox_id, draft_id)
    labels = _labels(row, req)
    # "sending" is taken only once its lease ran out (a sender died mid-send).
    taken = [None, "scheduled", "failed", "sending"]
    return await _deliver(ctx, who, row, labels, taken, on_error={"send_status": row.send_status})


async def approve(ctx: Context, who: Principal, inbox_id: str, draft_id: str) -> schemas.SendMessageResponse:
    """An organisation key sends a draft that was held for approval (403 for an inbox-scoped key)."""
    who.require_org()
    who.require("draft_send")
    row = await _row(ctx, who, inbox_id, draft_id)
    if row.send_status != "pending_approval":
        raise Conflict("the draft is not waiting for approval")
    sent = await _deliver(
        ctx,
        who,
        row,
        list(row.labels or []),
        ["pending_approval"],
        on_error={"send_status": "pending_approval"},
        approved=True,
    )
    assert isinstance(sent, schemas.SendMessageResponse)  # review=False: never held again
    return sent


async def reject(ctx: Context, who: Principal, inbox_id: str, draft_id: str, reason: str | None) -> dict[str, Any]:
    """An organisation key discards a held draft, with the reason given to the agent in draft.rejected."""
    who.require_org()
    who.require("draft_delete")
    row = await _row(ctx, who, inbox_id, draft_id)
    async with ctx.db.write() as conn:
        # Taking it first: an approval racing this rejection either wins or finds nothing left.
        if row.send_status != "pending_approval" or not await draft_store.take(
            conn, row.id, ["pending_approval"], LEASE
        ):
            raise Conflict("the draft is not waiting for approval")
        await draft_store.delete(conn, row.id)
        await _event(conn, row, "draft.rejected", rejected_by=who.api_key_id, reason=reason)
    ctx.bus.published()
    return {"draft_id": row.id, "status": "rejected", "reason": reason}


def _labels(row: Any, req: schemas.SendDraft) -> list[str]:
    add = clean_labels(req.add_labels, "add_labels")
    drop = set(clean_labels(req.remove_labels, "remove_labels"))
    return list(dict.fromkeys(label for label in [*(row.labels or []), *add] if label not in drop))


async def _to_approval(ctx: Context, who: Principal, row: Any) -> schemas.PendingApproval:
    if row.send_status != "pending_approval":
        async with ctx.db.write() as conn:
            values = {"send_status": "pending_approval", "next_attempt_at": None, "requested_by": who.api_key_id}
            if not await draft_store.update(conn, row.id, unless_sending=True, **values):
                raise Conflict("the draft is being sent")
            held = await draft_store.get_row(conn, row.id)
            await _event(conn, held, "draft.pending_approval", requested_by=who.api_key_id)
        ctx.bus.published()
    return schemas.PendingApproval(draft_id=row.id)


async def _compose(ctx: Context, who: Principal, row: Any) -> Draft:
    if row.forward_of:
        req = schemas.SendMessage(
            to=row.to,
            cc=row.cc,
            bcc=row.bcc,
            reply_to=row.reply_to,
            subject=row.subject,
            text=row.text,
            html=row.html,
            headers=row.headers,
        )
        draft, _ = await message_service.compose_forward(ctx, who, row.inbox_id, row.forward_of, req)
        return Draft(**{**_fields(draft), "attachments": [*draft.attachments, *_outgoing(row.attachments)]})
    return Draft(
        header_from="",  # set from the inbox in _submit
        to=list(row.to or []),
        cc=list(row.cc or []),
        bcc=list(row.bcc or []),
        reply_to=list(row.reply_to or []),
        subject=row.subject,
        text=row.text,
        html=row.html,
        attachments=_outgoing(row.attachments),
        headers=dict(row.headers or {}),
        in_reply_to=row.in_reply_to,
        references=list(row.references or []),
    )


async def _deliver(
    ctx: Context,
    who: Principal,
    row: Any,
    labels: list[str],
    taken_from: list[str | None],
    on_error: dict[str, Any],
    *,
    approved: bool = False,
    already_taken: bool = False,
) -> message_service.Sent:
    """Send a draft once: take it (unless the scheduler already has), submit it, then delete it
    with its events in one transaction; on failure give it back with ``on_error`` set."""
    if not already_taken:
        async with ctx.db.write() as conn:
            if not await draft_store.take(conn, row.id, taken_from, LEASE):
                raise Conflict("the draft is being sent or is no longer in a state to send")
    try:
        draft = await _compose(ctx, who, row)
        key = f"draft:{row.id}"
        sent = await message_service._submit(
            ctx, who, row.inbox_id, draft, labels, key, hashlib.sha256(key.encode()).hexdigest(), review=False
        )
    except Exception as exc:  # cancelled: the lease runs out and the draft is taken again
        error = exc.message if isinstance(exc, AgentpostError) else "internal error"
        async with ctx.db.write() as conn:
            await draft_store.release(conn, row.id, send_error=error, **on_error)
        raise
    assert isinstance(sent, schemas.SendMessageResponse)
    async with ctx.db.write() as conn:
        await draft_store.delete(conn, row.id)
        if approved:
            await _event(conn, row, "draft.approved", approved_by=who.api_key_id)
        await _event(conn, row, "draft.sent", message_id=sent.message_id, thread_id=sent.thread_id)
    ctx.bus.published()
    return sent


# --------------------------------------------------------------------------- the scheduler


async def send_due(ctx: Context) -> int:
    """Send the scheduled drafts whose time has come (each by one scheduler only); how many were taken."""
    async with ctx.db.write() as conn:
        rows = await draft_store.claim_due(conn, BATCH, LEASE)
    for row in rows:
        # The scheduler acts for the organisation; the draft's inbox decides about approval.
        who = Principal(row.organization_id, None, None, None)
        async with ctx.db.read() as conn:
            inbox = await inbox_store.get_row(conn, row.inbox_id)
        if inbox is None:
            async with ctx.db.write() as conn:
                await draft_store.delete(conn, row.id)
            continue
        if inbox.send_requires_approval:
            # Scheduling does not bypass approval: a due draft of such an inbox waits for an org key.
            async with ctx.db.write() as conn:
                await draft_store.release(conn, row.id, send_status="pending_approval", next_attempt_at=None)
                await _event(conn, row, "draft.pending_approval", requested_by=row.requested_by)
            ctx.bus.published()
            continue
        failed = {"send_status": "failed", "next_attempt_at": None}
        try:
            await _deliver(ctx, who, row, list(row.labels or []), [], failed, already_taken=True)
        except AgentpostError as exc:  # the draft itself cannot be sent: it stays, marked failed
            log.info("scheduled draft %s not sent: %s", row.id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled draft %s: send failed, retrying later", row.id)
            async with ctx.db.write() as conn:
                await draft_store.release(conn, row.id, send_status="scheduled", next_attempt_at=utcnow() + RETRY_AFTER)
    return len(rows)


async def run_scheduled(ctx: Context, poll: float = POLL_SECONDS) -> None:
    """Forever: send due scheduled drafts (serve runs it as a task in each parent process)."""
    while True:
        try:
            taken = await send_due(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad pass must not end the scheduler
            log.exception("scheduled drafts pass failed")
            taken = 0
        if taken < BATCH:
            await asyncio.sleep(poll)
