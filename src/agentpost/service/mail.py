"""Reading mail: messages and threads per inbox and organisation-wide, labels, raw, attachments."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from agentpost import model, schemas
from agentpost.errors import Forbidden, Invalid, NotFound
from agentpost.proto import mime
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.store import drafts as draft_store
from agentpost.store import inboxes as inbox_store
from agentpost.store import labels as labelset
from agentpost.store import messages as message_store
from agentpost.store.messages import MessageFilter
from agentpost.store.pages import clamp_limit, decode_token, encode_token

DOWNLOAD_TTL = 3600


@dataclass(slots=True)
class Listing:
    limit: int | None = None
    page_token: str | None = None
    labels: list[str] | None = None
    before: datetime | None = None
    after: datetime | None = None
    ascending: bool = False
    include_spam: bool = False
    include_blocked: bool = False
    include_unauthenticated: bool = False
    include_trash: bool = False
    header_from: list[str] | None = None  # substring matches, any of
    to: list[str] | None = None
    subject: list[str] | None = None


def listing_filter(who: Principal, q: Listing) -> MessageFilter:
    wanted = set(q.labels or [])
    exclude = []
    for label, include, permission in (
        (model.LABEL_SPAM, q.include_spam, "label_spam_read"),
        (model.LABEL_BLOCKED, q.include_blocked, "label_blocked_read"),
        (model.LABEL_UNAUTHENTICATED, q.include_unauthenticated, "label_unauthenticated_read"),
        (model.LABEL_TRASH, q.include_trash, "label_trash_read"),
    ):
        # Hidden labels stay hidden unless asked for (and permitted), or filtered on explicitly.
        if not ((include or label in wanted) and who.can(permission)):
            exclude.append(label)
    return MessageFilter(
        labels=sorted(wanted),
        before=q.before,
        after=q.after,
        ascending=q.ascending,
        exclude_labels=exclude,
        header_from=q.header_from or [],
        to=q.to or [],
        subject=q.subject or [],
    )


def clean_labels(values: str | list[str] | None, field: str) -> list[str]:
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    for label in items:
        if not label or len(label) > 100 or any(c in label for c in '"\\\r\n%') or not label.isprintable():
            raise Invalid(
                f"invalid label {label!r}",
                [{"path": field, "message": "labels are 1-100 printable characters without quotes"}],
            )
    return items


async def inbox_row_checked(conn: Any, who: Principal, inbox_id: str) -> Any:
    """The inbox row, or NotFound when it does not exist or belongs to another organisation."""
    row = await inbox_store.get_row(conn, inbox_id)
    if row is None or row.organization_id != who.organization_id:
        raise NotFound("inbox not found")
    return row


async def owned_inbox(ctx: Context, who: Principal, inbox_id: str) -> Any:
    """The inbox row, checked against the key's scope and organisation (404 otherwise)."""
    who.check_inbox(inbox_id)
    async with ctx.db.read() as conn:
        return await inbox_row_checked(conn, who, inbox_id)


Row = TypeVar("Row")


async def _page(
    ctx: Context,
    who: Principal,
    inbox_id: str | None,
    q: Listing,
    fetch: Callable[..., Awaitable[list[tuple[str, Row]]]],
) -> tuple[int, list[Row], str | None]:
    """One page of a per-inbox or organisation-wide listing: (limit, items, next page token).

    An inbox-scoped key always lists its own inbox; naming another inbox is a 404.
    """
    who.require("message_read")
    if inbox_id is not None:
        who.check_inbox(inbox_id)
    elif who.inbox_id is not None:
        inbox_id = who.inbox_id
    n = clamp_limit(q.limit)
    async with ctx.db.read() as conn:
        if inbox_id is not None:
            await inbox_row_checked(conn, who, inbox_id)
            inbox_id = inbox_id.lower()
        rows = await fetch(
            conn,
            organization_id=who.organization_id,
            inbox_id=inbox_id,
            flt=listing_filter(who, q),
            limit=n,
            cursor=decode_token(q.page_token),
        )
    token = encode_token(rows[n - 1][0]) if len(rows) > n else None
    return n, [item for _, item in rows[:n]], token


async def list_messages(ctx: Context, who: Principal, inbox_id: str | None, q: Listing) -> schemas.ListMessages:
    n, items, token = await _page(ctx, who, inbox_id, q, message_store.list_messages)
    return schemas.ListMessages(count=len(items), limit=n, next_page_token=token, messages=items)


async def _message_row(ctx: Context, who: Principal, inbox_id: str, message_id: str) -> Any:
    who.check_inbox(inbox_id)
    async with ctx.db.read() as conn:
        await inbox_row_checked(conn, who, inbox_id)
        row = await message_store.get_row(conn, inbox_id.lower(), message_id)
    if row is None:
        raise NotFound("message not found")
    return row


async def get_message(ctx: Context, who: Principal, inbox_id: str, message_id: str) -> schemas.Message:
    who.require("message_read")
    row = await _message_row(ctx, who, inbox_id, message_id)
    return message_store.to_message(row)


BATCH_GET_LIMIT = 500


async def batch_get(
    ctx: Context, who: Principal, inbox_id: str, message_ids: list[str]
) -> schemas.BatchGetMessagesResponse:
    """Many messages in one read; unknown ids are left out, so ``count < limit`` tells of misses."""
    who.require("message_read")
    if len(message_ids) > BATCH_GET_LIMIT:
        raise Invalid(
            f"at most {BATCH_GET_LIMIT} message_ids", [{"path": "message_ids", "message": f"at most {BATCH_GET_LIMIT}"}]
        )
    who.check_inbox(inbox_id)
    found = []
    async with ctx.db.read() as conn:
        await inbox_row_checked(conn, who, inbox_id)
        for message_id in message_ids:
            row = await message_store.get_row(conn, inbox_id.lower(), message_id)
            if row is not None:
                found.append(message_store.to_message(row))
    return schemas.BatchGetMessagesResponse(limit=len(message_ids), count=len(found), messages=found)


def _label_change(who: Principal, add_labels: Any, remove_labels: Any) -> tuple[set[str], set[str]]:
    """The checked (add, remove) sets of a label update."""
    add = set(clean_labels(add_labels, "add_labels"))
    remove = set(clean_labels(remove_labels, "remove_labels"))
    for path, values in (("add_labels", add), ("remove_labels", remove)):
        protected = model.PROTECTED_LABELS & values
        if protected:
            raise Invalid(
                f"system labels cannot be changed: {', '.join(sorted(protected))}",
                [{"path": path, "message": "system labels are set by agentpost only"}],
            )
    for label, permission in ((model.LABEL_SPAM, "label_spam_read"), (model.LABEL_TRASH, "label_trash_read")):
        # Moving mail into or out of a hidden label is for keys that may see that label.
        if label in add | remove and not who.can(permission):
            raise Forbidden(f"changing the {label} label needs the {permission} permission")
    return add, remove


async def update_labels(
    ctx: Context, who: Principal, inbox_id: str, message_id: str, req: schemas.UpdateLabels
) -> schemas.UpdateMessageResponse:
    who.require("message_update")
    add, remove = _label_change(who, req.add_labels, req.remove_labels)
    who.check_inbox(inbox_id)
    async with ctx.db.write() as conn:
        await inbox_row_checked(conn, who, inbox_id)
        row = await message_store.get_row(conn, inbox_id.lower(), message_id)
        if row is None:
            raise NotFound("message not found")
        labels = (set(labelset.load(row.labels)) | add) - remove
        await message_store.set_labels(conn, row.id, sorted(labels))
        await message_store.refresh_thread_labels(conn, row.thread_id)
    return schemas.UpdateMessageResponse(message_id=row.message_id, labels=sorted(labels))


BATCH_UPDATE_LIMIT = 50


async def batch_update(
    ctx: Context, who: Principal, inbox_id: str, req: schemas.BatchUpdateMessages
) -> schemas.BatchUpdateMessagesResponse:
    """One label change applied to many messages in one transaction; unknown ids are left out."""
    who.require("message_update")
    if not req.message_ids or len(req.message_ids) > BATCH_UPDATE_LIMIT:
        raise Invalid(
            f"message_ids must hold 1 to {BATCH_UPDATE_LIMIT} ids",
            [{"path": "message_ids", "message": f"1 to {BATCH_UPDATE_LIMIT} ids"}],
        )
    if req.add_labels is None and req.remove_labels is None:
        raise Invalid(
            "add_labels or remove_labels is required", [{"path": "add_labels", "message": "nothing to change"}]
        )
    add, remove = _label_change(who, req.add_labels, req.remove_labels)
    who.check_inbox(inbox_id)
    updates: list[schemas.UpdateMessageResponse] = []
    async with ctx.db.write() as conn:
        await inbox_row_checked(conn, who, inbox_id)
        touched_threads: set[str] = set()
        done: set[str] = set()
        for message_id in req.message_ids:
            row = await message_store.get_row(conn, inbox_id.lower(), message_id)
            if row is None or row.id in done:
                continue
            done.add(row.id)
            labels = (set(labelset.load(row.labels)) | add) - remove
            await message_store.set_labels(conn, row.id, sorted(labels))
            touched_threads.add(row.thread_id)
            updates.append(schemas.UpdateMessageResponse(message_id=row.message_id, labels=sorted(labels)))
        for thread_id in sorted(touched_threads):
            await message_store.refresh_thread_labels(conn, thread_id)
    return schemas.BatchUpdateMessagesResponse(limit=len(req.message_ids), count=len(updates), updates=updates)


async def raw_download(ctx: Context, who: Principal, inbox_id: str, message_id: str) -> schemas.RawMessage:
    who.require("message_read")
    row = await _message_row(ctx, who, inbox_id, message_id)
    token, expires = ctx.sealer.sign({"k": "raw", "m": str(row.id)}, DOWNLOAD_TTL)
    return schemas.RawMessage(
        message_id=str(row.message_id),
        size=int(row.size),
        download_url=f"{ctx.public_url}/v0/downloads/{token}",
        expires_at=datetime.fromtimestamp(expires, model.utcnow().tzinfo),
    )


async def attachment(
    ctx: Context, who: Principal, inbox_id: str, message_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    who.require("message_read")
    row = await _message_row(ctx, who, inbox_id, message_id)
    meta = next((a for a in (row.attachments or []) if a["attachment_id"] == attachment_id), None)
    if meta is None:
        raise NotFound("attachment not found")
    token, expires = ctx.sealer.sign({"k": "att", "m": str(row.id), "a": attachment_id}, DOWNLOAD_TTL)
    return schemas.AttachmentResponse(
        **meta,
        download_url=f"{ctx.public_url}/v0/downloads/{token}",
        expires_at=datetime.fromtimestamp(expires, model.utcnow().tzinfo),
    )


async def attachment_content(
    ctx: Context, who: Principal, inbox_id: str, message_id: str, attachment_id: str
) -> mime.ParsedAttachment:
    """One attachment's decoded bytes, for adapters that hand content over directly (MCP) rather
    than a download link."""
    who.require("message_read")
    row = await _message_row(ctx, who, inbox_id, message_id)
    if not any(a["attachment_id"] == attachment_id for a in (row.attachments or [])):
        raise NotFound("attachment not found")
    async with ctx.db.read() as conn:
        data = await message_store.raw(conn, row.blob_id)
    for part in mime.parse(data or b"").attachments:
        if part.attachment_id == attachment_id:
            return part
    raise NotFound("attachment not found")


async def download(ctx: Context, token: str) -> tuple[bytes, str, str | None]:
    """Resolve a signed download token: (bytes, content type, filename)."""
    claims = ctx.sealer.verify(token)
    if claims is None:
        raise NotFound("download link is invalid or expired")
    if claims.get("k") == "draft_att":
        # Draft attachments are kept base64 in the draft row until it is sent (then the link 404s).
        async with ctx.db.read() as conn:
            stored = await draft_store.attachment(conn, str(claims["d"]), str(claims["a"]))
        if stored is None:
            raise NotFound("attachment not found")
        content_type = stored.get("content_type") or "application/octet-stream"
        return base64.b64decode(stored["content"]), content_type, stored.get("filename")
    async with ctx.db.read() as conn:
        blob_id = await message_store.blob_id_of(conn, str(claims["m"]))
        data = await message_store.raw(conn, blob_id) if blob_id else None
    if data is None:
        raise NotFound("message not found")
    if claims.get("k") == "raw":
        return data, "message/rfc822", None
    # Attachments are cut from the stored raw message on demand: ids are MIME part paths.
    parsed = mime.parse(data)
    for part in parsed.attachments:
        if part.attachment_id == claims.get("a"):
            return part.content, part.content_type, part.filename
    raise NotFound("attachment not found")


# ---- threads ---------------------------------------------------------------------------------


async def list_threads(ctx: Context, who: Principal, inbox_id: str | None, q: Listing) -> schemas.ListThreads:
    n, items, token = await _page(ctx, who, inbox_id, q, message_store.list_threads)
    return schemas.ListThreads(count=len(items), limit=n, next_page_token=token, threads=items)


async def _thread_row(ctx: Context, who: Principal, inbox_id: str | None, thread_id: str) -> Any:
    if inbox_id is not None:
        who.check_inbox(inbox_id)
    async with ctx.db.read() as conn:
        row = await message_store.get_thread_row(conn, thread_id)
    if not who.owns(row, inbox_id):
        raise NotFound("thread not found")
    return row


async def get_thread(ctx: Context, who: Principal, inbox_id: str | None, thread_id: str, q: Listing) -> schemas.Thread:
    who.require("message_read")
    row = await _thread_row(ctx, who, inbox_id, thread_id)
    async with ctx.db.read() as conn:
        msgs = await message_store.thread_messages(conn, thread_id, listing_filter(who, q).exclude_labels)
    item = message_store.to_thread_item(row)
    return schemas.Thread(**item.model_dump(), count=len(msgs), limit=None, next_page_token=None, messages=msgs)


async def update_thread_labels(
    ctx: Context, who: Principal, inbox_id: str | None, thread_id: str, req: schemas.UpdateLabels
) -> schemas.UpdateThreadResponse:
    who.require("message_update")
    add, remove = _label_change(who, req.add_labels, req.remove_labels)
    await _thread_row(ctx, who, inbox_id, thread_id)
    async with ctx.db.write() as conn:
        labels = await message_store.set_thread_labels(conn, thread_id, sorted(add), sorted(remove))
    return schemas.UpdateThreadResponse(thread_id=thread_id, labels=labels)


async def delete_thread(ctx: Context, who: Principal, inbox_id: str | None, thread_id: str) -> None:
    who.require("message_delete")
    await _thread_row(ctx, who, inbox_id, thread_id)
    async with ctx.db.write() as conn:
        await message_store.delete_thread(conn, thread_id)


async def thread_attachment(
    ctx: Context, who: Principal, inbox_id: str | None, thread_id: str, attachment_id: str
) -> schemas.AttachmentResponse:
    who.require("message_read")
    row = await _thread_row(ctx, who, inbox_id, thread_id)
    async with ctx.db.read() as conn:
        msgs = await message_store.thread_messages(conn, thread_id, [])
    for m in msgs:
        if any(a.attachment_id == attachment_id for a in (m.attachments or [])):
            return await attachment(ctx, who, str(row.inbox_id), m.message_id, attachment_id)
    raise NotFound("attachment not found")
