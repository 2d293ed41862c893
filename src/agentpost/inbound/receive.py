"""The receive pipeline, the only writer of received mail: parse, label, thread, store, notify."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from agentpost import model
from agentpost.errors import Rejected
from agentpost.inbound.checks import Route
from agentpost.model import Envelope, new_id
from agentpost.proto import codes, mime, text
from agentpost.proto.threads import thread_keys
from agentpost.store import messages as message_store
from agentpost.store.db import Database
from agentpost.store.messages import NewAttachment, NewMessage, Saved

log = logging.getLogger(__name__)

# Messages larger than this are parsed in a worker thread so the event loop keeps serving
# other sessions: parsing is pure Python, and HTML to text costs 40-80 ms per 100 kB of HTML.
OFFLOAD_PARSE_BYTES = 32 * 1024


_last_date: tuple[int, str] = (-1, "")


def _rfc5322_date(moment: datetime) -> str:
    """RFC 5322 §3.3 date-time, formatted once per second (every Received: header needs one)."""
    global _last_date
    second = int(moment.timestamp())
    if _last_date[0] != second:
        _last_date = (second, format_datetime(moment.replace(microsecond=0)))
    return _last_date[1]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What was stored: one (inbox, message, thread, event) per accepted recipient."""

    message_id: str
    saved: list[tuple[str, Saved]]


@dataclass(slots=True)
class _Pending:
    items: list[NewMessage]
    future: asyncio.Future[list[Saved]]


class GroupCommitter:
    """Commits received messages in groups: one transaction (and one fsync) per group.

    While one group is being written, new arrivals queue up and form the next group, so under
    load the per-message cost of a durable commit shrinks; with one message at a time it is a
    plain commit. Every caller's future resolves only after its group has committed.
    """

    def __init__(self, db: Database, max_batch: int, on_commit: Callable[[], None], linger: float = 0.0) -> None:
        self.db = db
        self.max_batch = max(1, max_batch)
        self.on_commit = on_commit
        self.linger = max(0.0, linger)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-committer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("shutting down"))

    async def commit(self, items: list[NewMessage]) -> list[Saved]:
        if self._task is None:
            return await self.db.run_write(message_store.save_batch, items)
        future: asyncio.Future[list[Saved]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future))
        return await future

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            if self.linger and self._queue.qsize() < self.max_batch:
                # Let the group fill a little: every commit has a fixed cost (statements, GIL
                # hand-offs to the writer thread, fsync), so fewer, larger groups win under load.
                await asyncio.sleep(self.linger)
            size = len(group[0].items)
            while size < self.max_batch and not self._queue.empty():
                pending = self._queue.get_nowait()
                group.append(pending)
                size += len(pending.items)
            await self._write(group)

    async def _write(self, group: list[_Pending]) -> None:
        try:
            saved = await self.db.run_write(message_store.save_batch, [i for p in group for i in p.items])
        except asyncio.CancelledError:
            for p in group:
                if not p.future.done():
                    p.future.set_exception(RuntimeError("shutting down"))
            raise
        except Exception:
            if len(group) == 1:
                log.exception("commit of a received message failed")
                if not group[0].future.done():
                    group[0].future.set_exception(RuntimeError("commit failed"))
                return
            # One bad message must not fail its neighbours: retry each on its own.
            for p in group:
                await self._write([p])
            return
        offset = 0
        for p in group:
            n = len(p.items)
            if not p.future.done():
                p.future.set_result(saved[offset : offset + n])
            offset += n
        self.on_commit()


class Receiver:
    """inbound.receive: turns one accepted SMTP transaction into stored, threaded messages."""

    def __init__(
        self,
        db: Database,
        hostname: str,
        limits: mime.MimeLimits,
        committer: GroupCommitter,
    ) -> None:
        self.db = db
        self.hostname = hostname
        self.limits = limits
        self.committer = committer

    async def receive(self, envelope: Envelope, raw: bytes, routes: list[Route]) -> Receipt:
        """Parse, label and thread one message for each routed inbox; return after the commit."""
        if not routes:
            raise Rejected(codes.R554_NO_VALID_RECIPIENTS, "no routed recipients")
        if len(raw) > OFFLOAD_PARSE_BYTES:
            items = await asyncio.to_thread(self.prepare, envelope, raw, routes)
        else:
            items = self.prepare(envelope, raw, routes)
        saved = await self.committer.commit(items)
        return Receipt(items[0].message_id, [(r.inbox_id, s) for r, s in zip(routes, saved, strict=True)])

    def prepare(self, envelope: Envelope, raw: bytes, routes: list[Route]) -> list[NewMessage]:
        parsed = mime.parse(raw, self.limits)
        body_text = parsed.text
        html = None
        extracted_html = None
        if parsed.html is not None:
            if body_text is None:
                body_text = text.html_to_text(parsed.html)
            html = text.sanitize_html(parsed.html)
            extracted_html = text.extract_reply_html(parsed.html)
        extracted_text = text.extract_reply(body_text) if body_text else None
        preview = text.preview(extracted_text or body_text or "") or None
        labels = [model.LABEL_RECEIVED, model.LABEL_UNREAD]
        if parsed.auto_submitted == "auto-replied":
            labels.append(model.LABEL_AUTO_REPLY)
        elif parsed.auto_submitted == "bounce":
            labels.append(model.LABEL_BOUNCE)
        elif parsed.auto_submitted == "feedback-report":
            labels.append(model.LABEL_REPORT)
        elif parsed.auto_submitted == "bulk":
            labels.append(model.LABEL_BULK)
        blob_key = new_id("blb_")
        # RFC 5321 §4.4: the receiving server prepends trace fields; the rest stays byte-exact.
        stored_raw = self.trace_header(envelope, blob_key) + raw
        message_id = parsed.message_id or f"<{blob_key}@{self.hostname}>"
        keys = thread_keys(parsed.message_id, parsed.in_reply_to, parsed.references)
        attachments = [NewAttachment.of(a) for a in parsed.attachments]
        items = []
        for index, route in enumerate(routes):
            items.append(
                NewMessage(
                    pk=new_id("msg_"),
                    inbox_id=route.inbox_id,
                    organization_id=route.organization_id,
                    message_id=message_id,
                    direction="received",
                    labels=labels,
                    mail_from=envelope.mail_from,
                    header_from=parsed.header_from or envelope.mail_from,
                    from_address=parsed.from_address,
                    to=parsed.to,
                    cc=parsed.cc,
                    bcc=[],
                    reply_to=parsed.reply_to,
                    subject=parsed.subject,
                    preview=preview,
                    text=body_text,
                    html=html,
                    extracted_text=extracted_text,
                    extracted_html=extracted_html,
                    in_reply_to=parsed.in_reply_to,
                    references=parsed.references,
                    headers=parsed.headers,
                    attachments=attachments,
                    defects=parsed.defects,
                    auth=None,
                    size=len(stored_raw),
                    timestamp=envelope.received_at,
                    thread_keys=keys,
                    raw_key=blob_key,
                    raw=stored_raw if index == 0 else None,
                )
            )
        return items

    def trace_header(self, envelope: Envelope, queue_id: str) -> bytes:
        helo = envelope.helo.replace("\r", "").replace("\n", "")[:255] or "unknown"
        protocol = "ESMTPS" if envelope.tls else "ESMTP"
        tls = f"\r\n\t(using {envelope.tls})" if envelope.tls else ""
        recipient = f"\r\n\tfor <{envelope.rcpt_to[0]}>" if len(envelope.rcpt_to) == 1 else ""
        mail_from = envelope.mail_from.replace("\r", "").replace("\n", "").replace(">", "")
        received = (
            f"Return-Path: <{mail_from}>\r\n"
            f"Received: from {helo} ([{envelope.client_ip}]){tls}\r\n"
            f"\tby {self.hostname} (agentpost) with {protocol} id {queue_id}{recipient};\r\n"
            f"\t{_rfc5322_date(envelope.received_at)}\r\n"
        )
        return received.encode("utf-8", "replace")
