"""Messages and their threads: the group-committed write of received mail, and every read of mail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agentpost.model import new_id, utcnow
from agentpost.proto.mime import ParsedAttachment
from agentpost.store import labels as labelset
from agentpost.store.bulk import BulkInsert
from agentpost.store.tables import attachments, blobs, events, messages, threads

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    # At run time the row -> API shape functions import it themselves: the write process, which
    # imports this module for save_batch, never builds API shapes and so never loads pydantic.
    from agentpost import schemas

MAX_THREAD_PARTICIPANTS = 50


@dataclass(slots=True)
class NewAttachment:
    attachment_id: str
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    disposition: str

    @classmethod
    def of(cls, part: ParsedAttachment) -> NewAttachment:
        return cls(part.attachment_id, part.filename, part.content_type, part.size, part.content_id, part.disposition)


@dataclass(slots=True)
class NewMessage:
    """One stored copy of a message for one inbox, as the pipelines hand it to the store."""

    pk: str
    inbox_id: str
    organization_id: str
    message_id: str
    direction: str  # received | sent
    labels: list[str]
    mail_from: str
    header_from: str
    from_address: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str | None
    preview: str | None
    text: str | None
    html: str | None
    extracted_text: str | None
    extracted_html: str | None
    in_reply_to: str | None
    references: list[str]
    headers: dict[str, str]
    attachments: list[NewAttachment]
    defects: list[str]
    auth: dict[str, Any] | None
    size: int
    timestamp: datetime
    thread_keys: list[str]  # msg-ids this message refers to, most specific first
    raw_key: str  # blob id; copies of one message for several inboxes share one blob
    raw: bytes | None = None  # None when another copy in the batch carries the blob
    event_type: str = "message.received"


@dataclass(slots=True)
class Saved:
    pk: str
    thread_id: str
    event_id: str


@dataclass(slots=True)
class _ThreadState:
    id: str
    inbox_id: str
    organization_id: str
    subject: str | None
    labels: set[str]
    senders: list[str]
    recipients: list[str]
    attachments: list[dict[str, Any]]
    message_count: int = 0
    size: int = 0
    received_at: datetime | None = None
    sent_at: datetime | None = None
    created_at: datetime | None = None
    new: bool = True
    preview: str | None = None
    last_message_id: str = ""
    last_pk: str = ""
    touched: bool = field(default=False)


def _merge_unique(target: list[str], values: Sequence[str]) -> None:
    for value in values:
        if value and value not in target and len(target) < MAX_THREAD_PARTICIPANTS:
            target.append(value)


def _attachment_dicts(items: list[NewAttachment]) -> list[dict[str, Any]]:
    return [
        {
            "attachment_id": a.attachment_id,
            "filename": a.filename,
            "size": a.size,
            "content_type": a.content_type,
            "content_disposition": a.disposition,
            "content_id": a.content_id,
        }
        for a in items
    ]


_BLOBS = BulkInsert(blobs, ["id", "data", "size", "created_at"])
_THREADS = BulkInsert(threads, [c.name for c in threads.c])
_MESSAGES = BulkInsert(messages, [c.name for c in messages.c])
_ATTACHMENTS = BulkInsert(attachments, [c.name for c in attachments.c])
_EVENTS = BulkInsert(events, ["event_id", "organization_id", "inbox_id", "event_type", "payload", "created_at"])


def save_batch(conn: sa.Connection, batch: list[NewMessage]) -> list[Saved]:
    """Store messages, thread them and log their events in the caller's ONE transaction.

    Threading (RFC 5322 §3.6.4): a message joins the thread of the newest message in the same
    inbox whose Message-ID it names in In-Reply-To or References; otherwise it starts a thread.
    The subject alone never joins threads: unrelated mails share subjects like "Hello".
    """
    now = utcnow()
    # 1. Which referenced Message-IDs are already known, per inbox (one query for the batch).
    wanted: set[str] = set()
    inbox_ids: set[str] = set()
    for item in batch:
        wanted.update(item.thread_keys)
        inbox_ids.add(item.inbox_id)
    known: dict[tuple[str, str], str] = {}
    if wanted:
        wanted_list = sorted(wanted)
        for start in range(0, len(wanted_list), 500):
            rows = conn.execute(
                sa.select(messages.c.inbox_id, messages.c.message_id, messages.c.thread_id)
                .where(messages.c.inbox_id.in_(inbox_ids), messages.c.message_id.in_(wanted_list[start : start + 500]))
                .order_by(messages.c.id)
            )
            for r in rows:
                known[(r.inbox_id, r.message_id)] = r.thread_id
    # 2. Resolve each message's thread, in batch order so a reply in the same batch finds its parent.
    chosen: list[str] = []
    stored_threads: set[str] = set(known.values())
    for item in batch:
        thread_id = next((known[(item.inbox_id, k)] for k in item.thread_keys if (item.inbox_id, k) in known), None)
        if thread_id is None:
            thread_id = new_id("thr_")
        known[(item.inbox_id, item.message_id)] = thread_id
        chosen.append(thread_id)
    # 3. Load the stored threads this batch adds to (new threads need no query).
    states: dict[str, _ThreadState] = {}
    existing_ids = sorted(stored_threads & set(chosen))
    for start in range(0, len(existing_ids), 500):
        rows = conn.execute(sa.select(threads).where(threads.c.id.in_(existing_ids[start : start + 500])))
        for r in rows:
            states[r.id] = _ThreadState(
                id=r.id,
                inbox_id=r.inbox_id,
                organization_id=r.organization_id,
                subject=r.subject,
                labels=set(labelset.load(r.labels)),
                senders=list(r.senders or []),
                recipients=list(r.recipients or []),
                attachments=list(r.attachments or []),
                message_count=r.message_count,
                size=r.size,
                received_at=r.received_at,
                sent_at=r.sent_at,
                created_at=r.created_at,
                new=False,
                preview=r.preview,
                last_message_id=r.last_message_id,
                last_pk=r.last_pk,
            )
    # 4. Build the rows.
    message_rows: list[dict[str, Any]] = []
    blob_rows: list[dict[str, Any]] = []
    attachment_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    saved: list[Saved] = []
    for item, thread_id in zip(batch, chosen, strict=True):
        state = states.get(thread_id)
        if state is None:
            state = states[thread_id] = _ThreadState(
                id=thread_id,
                inbox_id=item.inbox_id,
                organization_id=item.organization_id,
                subject=item.subject,
                labels=set(),
                senders=[],
                recipients=[],
                attachments=[],
                created_at=item.timestamp,
            )
        state.touched = True
        state.labels.update(item.labels)
        _merge_unique(state.senders, [item.header_from])
        _merge_unique(state.recipients, item.to + item.cc)
        state.message_count += 1
        state.size += item.size
        state.preview = item.preview
        state.last_message_id = item.message_id
        state.last_pk = item.pk
        attachment_meta = _attachment_dicts(item.attachments)
        if len(state.attachments) < 100:
            state.attachments.extend(attachment_meta[: 100 - len(state.attachments)])
        if item.direction == "sent":
            state.sent_at = item.timestamp
        else:
            state.received_at = item.timestamp
        if item.raw is not None:
            blob_rows.append({"id": item.raw_key, "data": item.raw, "size": len(item.raw), "created_at": now})
        message_rows.append(
            {
                "id": item.pk,
                "inbox_id": item.inbox_id,
                "organization_id": item.organization_id,
                "thread_id": thread_id,
                "message_id": item.message_id,
                "labels": labelset.dump(item.labels),
                "direction": item.direction,
                "mail_from": item.mail_from,
                "header_from": item.header_from,
                "to": item.to,
                "cc": item.cc or None,
                "bcc": item.bcc or None,
                "reply_to": item.reply_to or None,
                "subject": item.subject,
                "preview": item.preview,
                "text": item.text,
                "html": item.html,
                "extracted_text": item.extracted_text,
                "extracted_html": item.extracted_html,
                "in_reply_to": item.in_reply_to,
                "references": item.references or None,
                "headers": item.headers,
                "attachments": attachment_meta or None,
                "defects": item.defects or None,
                "auth": item.auth,
                "size": item.size,
                "blob_id": item.raw_key,
                "timestamp": item.timestamp,
                "created_at": now,
                "updated_at": now,
            }
        )
        for a in item.attachments:
            attachment_rows.append(
                {
                    "message_pk": item.pk,
                    "attachment_id": a.attachment_id,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "content_id": a.content_id,
                    "disposition": a.disposition,
                }
            )
        event_id = new_id("evt_")
        event_rows.append(
            {
                "event_id": event_id,
                "organization_id": item.organization_id,
                "inbox_id": item.inbox_id,
                "event_type": item.event_type,
                "payload": {"message_pk": item.pk, "thread_id": thread_id},
                "created_at": now,
            }
        )
        saved.append(Saved(item.pk, thread_id, event_id))
    new_threads: list[dict[str, Any]] = []
    changed_threads: list[dict[str, Any]] = []
    for state in states.values():
        if not state.touched:
            continue
        row = {
            "labels": labelset.dump(state.labels),
            "senders": state.senders,
            "recipients": state.recipients,
            "preview": state.preview,
            "attachments": state.attachments or None,
            "last_message_id": state.last_message_id,
            "message_count": state.message_count,
            "size": state.size,
            "received_at": state.received_at,
            "sent_at": state.sent_at,
            "last_pk": state.last_pk,
            "updated_at": now,
        }
        if state.new:
            row.update(
                id=state.id,
                inbox_id=state.inbox_id,
                organization_id=state.organization_id,
                subject=state.subject,
                created_at=state.created_at or now,
            )
            new_threads.append(row)
        else:
            row["b_id"] = state.id
            changed_threads.append(row)
    if blob_rows:
        _BLOBS.execute(conn, blob_rows)
    if new_threads:
        _THREADS.execute(conn, new_threads)
    if changed_threads:
        stmt = (
            threads.update()
            .where(threads.c.id == sa.bindparam("b_id"))
            .values({k: sa.bindparam(k) for k in changed_threads[0] if k != "b_id"})
        )
        conn.execute(stmt, changed_threads)
    _MESSAGES.execute(conn, message_rows)
    if attachment_rows:
        _ATTACHMENTS.execute(conn, attachment_rows)
    _EVENTS.execute(conn, event_rows)
    return saved


# ---- reads -----------------------------------------------------------------------------------

_ITEM_COLUMNS = [c for c in messages.c if c.name not in ("text", "html", "extracted_text", "extracted_html")]


def _attachments(value: Any) -> list[schemas.Attachment] | None:
    from agentpost import schemas

    if not value:
        return None
    return [schemas.Attachment(**a) for a in value]


def to_item(row: Any) -> schemas.MessageItem:
    from agentpost import schemas

    return schemas.MessageItem(
        inbox_id=row.inbox_id,
        thread_id=row.thread_id,
        message_id=row.message_id,
        labels=labelset.load(row.labels),
        timestamp=row.timestamp,
        **{"from": row.header_from},
        to=row.to or [],
        cc=row.cc,
        bcc=row.bcc,
        subject=row.subject,
        preview=row.preview,
        attachments=_attachments(row.attachments),
        in_reply_to=row.in_reply_to,
        references=row.references,
        headers=row.headers,
        size=row.size,
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


def to_message(row: Any) -> schemas.Message:
    from agentpost import schemas

    return schemas.Message(
        **to_item(row).model_dump(by_alias=False),
        reply_to=row.reply_to,
        text=row.text,
        html=row.html,
        extracted_text=row.extracted_text,
        extracted_html=row.extracted_html,
        defects=row.defects,
        auth=row.auth,
    )


@dataclass(slots=True)
class MessageFilter:
    labels: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None
    ascending: bool = False
    exclude_labels: list[str] = field(default_factory=list)
    # Case-insensitive substring filters (any of the values); messages only.
    header_from: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    subject: list[str] = field(default_factory=list)


def _contains(column: Any, values: list[str]) -> sa.ColumnElement[bool]:
    text = sa.func.lower(sa.cast(column, sa.Text))
    return sa.or_(
        *(
            text.like("%" + v.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", escape="\\")
            for v in values
        )
    )


def _filtered(query: Any, table: sa.Table, flt: MessageFilter, time_column: sa.Column[Any]) -> Any:
    for label in flt.labels:
        query = query.where(labelset.has(table.c.labels, label))
    for label in flt.exclude_labels:
        query = query.where(sa.not_(labelset.has(table.c.labels, label)))
    if flt.before is not None:
        query = query.where(time_column < flt.before)
    if flt.after is not None:
        query = query.where(time_column > flt.after)
    return query


async def list_messages(
    conn: AsyncConnection,
    *,
    organization_id: str,
    inbox_id: str | None,
    flt: MessageFilter,
    limit: int,
    cursor: str | None,
) -> list[tuple[str, schemas.MessageItem]]:
    query = sa.select(*_ITEM_COLUMNS).where(messages.c.organization_id == organization_id)
    if inbox_id is not None:
        query = query.where(messages.c.inbox_id == inbox_id)
    query = _filtered(query, messages, flt, messages.c.timestamp)
    for column, values in (
        (messages.c.header_from, flt.header_from),
        (messages.c.to, flt.to),
        (messages.c.subject, flt.subject),
    ):
        if values:
            query = query.where(_contains(column, values))
    if cursor:
        query = query.where(messages.c.id > cursor if flt.ascending else messages.c.id < cursor)
    order = messages.c.id.asc() if flt.ascending else messages.c.id.desc()
    rows = (await conn.execute(query.order_by(order).limit(limit + 1))).all()
    return [(r.id, to_item(r)) for r in rows]


async def get_row(conn: AsyncConnection, inbox_id: str, message_id: str) -> Any | None:
    """By RFC Message-ID (the newest copy) or by internal id."""
    query = (
        sa.select(messages)
        .where(
            messages.c.inbox_id == inbox_id, sa.or_(messages.c.message_id == message_id, messages.c.id == message_id)
        )
        .order_by(messages.c.id.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def get_by_pk(conn: AsyncConnection, pk: str) -> Any | None:
    return (await conn.execute(sa.select(messages).where(messages.c.id == pk))).first()


async def raw(conn: AsyncConnection, blob_id: str) -> bytes | None:
    row = (await conn.execute(sa.select(blobs.c.data).where(blobs.c.id == blob_id))).first()
    return bytes(row[0]) if row else None


async def blob_id_of(conn: AsyncConnection, pk: str) -> str | None:
    row = (await conn.execute(sa.select(messages.c.blob_id).where(messages.c.id == pk))).first()
    return str(row[0]) if row else None


async def set_labels(conn: AsyncConnection, pk: str, new_labels: list[str]) -> None:
    await conn.execute(
        messages.update().where(messages.c.id == pk).values(labels=labelset.dump(new_labels), updated_at=utcnow())
    )


async def refresh_thread_labels(conn: AsyncConnection, thread_id: str) -> list[str]:
    """A thread's labels are the union of its messages' labels."""
    rows = (await conn.execute(sa.select(messages.c.labels).where(messages.c.thread_id == thread_id))).all()
    union: set[str] = set()
    for r in rows:
        union.update(labelset.load(r.labels))
    await conn.execute(threads.update().where(threads.c.id == thread_id).values(labels=labelset.dump(union)))
    return sorted(union)


# ---- threads ---------------------------------------------------------------------------------


def to_thread_item(row: Any) -> schemas.ThreadItem:
    from agentpost import schemas

    return schemas.ThreadItem(
        inbox_id=row.inbox_id,
        thread_id=row.id,
        labels=labelset.load(row.labels),
        timestamp=max(t for t in (row.received_at, row.sent_at, row.updated_at) if t is not None)
        if (row.received_at or row.sent_at)
        else row.updated_at,
        received_timestamp=row.received_at,
        sent_timestamp=row.sent_at,
        senders=row.senders or [],
        recipients=row.recipients or [],
        subject=row.subject,
        preview=row.preview,
        attachments=_attachments(row.attachments),
        last_message_id=row.last_message_id,
        message_count=row.message_count,
        size=row.size,
        updated_at=row.updated_at,
        created_at=row.created_at,
    )


async def list_threads(
    conn: AsyncConnection,
    *,
    organization_id: str,
    inbox_id: str | None,
    flt: MessageFilter,
    limit: int,
    cursor: str | None,
) -> list[tuple[str, schemas.ThreadItem]]:
    query = sa.select(threads).where(threads.c.organization_id == organization_id)
    if inbox_id is not None:
        query = query.where(threads.c.inbox_id == inbox_id)
    query = _filtered(query, threads, flt, threads.c.updated_at)
    if cursor:
        query = query.where(threads.c.last_pk > cursor if flt.ascending else threads.c.last_pk < cursor)
    order = threads.c.last_pk.asc() if flt.ascending else threads.c.last_pk.desc()
    rows = (await conn.execute(query.order_by(order).limit(limit + 1))).all()
    return [(r.last_pk, to_thread_item(r)) for r in rows]


async def get_thread_row(conn: AsyncConnection, thread_id: str) -> Any | None:
    return (await conn.execute(sa.select(threads).where(threads.c.id == thread_id))).first()


async def thread_messages(conn: AsyncConnection, thread_id: str, exclude_labels: list[str]) -> list[schemas.Message]:
    query = sa.select(messages).where(messages.c.thread_id == thread_id)
    for label in exclude_labels:
        query = query.where(sa.not_(labelset.has(messages.c.labels, label)))
    rows = (await conn.execute(query.order_by(messages.c.id.asc()))).all()
    return [to_message(r) for r in rows]


async def set_thread_labels(conn: AsyncConnection, thread_id: str, add: list[str], remove: list[str]) -> list[str]:
    rows = (
        await conn.execute(sa.select(messages.c.id, messages.c.labels).where(messages.c.thread_id == thread_id))
    ).all()
    now = utcnow()
    for r in rows:
        current = set(labelset.load(r.labels))
        updated = (current | set(add)) - set(remove)
        if updated != current:
            await conn.execute(
                messages.update().where(messages.c.id == r.id).values(labels=labelset.dump(updated), updated_at=now)
            )
    return await refresh_thread_labels(conn, thread_id)


async def delete_thread(conn: AsyncConnection, thread_id: str) -> None:
    await _delete_mail(conn, messages.c.thread_id == thread_id, threads.c.id == thread_id)


async def delete_inbox_mail(conn: AsyncConnection, inbox_id: str) -> None:
    await _delete_mail(conn, messages.c.inbox_id == inbox_id, threads.c.inbox_id == inbox_id)


async def _delete_mail(
    conn: AsyncConnection, which_messages: sa.ColumnElement[bool], which_threads: sa.ColumnElement[bool]
) -> None:
    """Messages and threads, then the raw blobs no remaining copy refers to."""
    blob_ids = [r[0] for r in (await conn.execute(sa.select(messages.c.blob_id).where(which_messages))).all()]
    await conn.execute(messages.delete().where(which_messages))
    await conn.execute(threads.delete().where(which_threads))
    await _drop_orphan_blobs(conn, blob_ids)


async def _drop_orphan_blobs(conn: AsyncConnection, blob_ids: list[str]) -> None:
    for start in range(0, len(blob_ids), 500):
        chunk = blob_ids[start : start + 500]
        still = {
            r[0] for r in (await conn.execute(sa.select(messages.c.blob_id).where(messages.c.blob_id.in_(chunk)))).all()
        }
        gone = [b for b in chunk if b not in still]
        if gone:
            await conn.execute(blobs.delete().where(blobs.c.id.in_(gone)))


async def count(conn: AsyncConnection) -> int:
    return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())
