"""outbound.submit: the single entry for every outgoing message: compose, sign, store the sent copy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from agentpost import model
from agentpost.mailauth.dkim import DkimSigner
from agentpost.model import new_id, utcnow
from agentpost.proto import mime, text
from agentpost.proto.compose import Composed, Draft, compose
from agentpost.proto.threads import thread_keys
from agentpost.store import queue
from agentpost.store.db import Database
from agentpost.store.messages import NewAttachment, NewMessage
from agentpost.store.queue import QueueItem, SavedSent, SentMessage

# Stores sent copies with their queue items, durably (a group committer in serve).
CommitSent = Callable[[list[SentMessage]], Awaitable[list[SavedSent]]]


class Dispatch(Protocol):
    """The outbound worker as submissions see it (outbound/worker.py; set by serve)."""

    def lease(self) -> timedelta | None:
        """How long a submission's queue items may start leased to this process: None when its
        worker has no room, so they are queued for whichever worker claims them."""

    def take(self, items: list[QueueItem], raw: bytes) -> None:
        """Deliver ``items`` (committed, leased to this process) of the signed message ``raw``."""

    def wake(self) -> None:
        """Queue items are due now (committed without a lease)."""


class NoWorker:
    """No outbound worker in this process (one-shot CLI commands): nothing is leased at submission."""

    def lease(self) -> timedelta | None:
        return None

    def take(self, items: list[QueueItem], raw: bytes) -> None:
        raise RuntimeError("no outbound worker to take leased items")

    def wake(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Submission:
    organization_id: str
    inbox_id: str
    mail_from: str  # envelope sender (RFC 5321 reverse-path)
    domain: str  # sending domain: Message-ID right-hand side
    draft: Draft
    labels: list[str]
    # The sent copy's id, when the caller needs it before composing (VERP and unsubscribe
    # tokens name it); empty: a new one.
    message_pk: str = ""


@dataclass(frozen=True, slots=True)
class Submitted:
    message_id: str
    thread_id: str
    raw: bytes  # signed, exactly as it goes on the wire
    envelope_rcpt: list[str]
    smtputf8: bool
    leased: list[QueueItem]  # queue items leased to this process at commit, for its worker


# Drafts up to this size are composed and signed on the event loop (~1.1 ms for a small
# message, most of it the RSA signature); bigger ones (attachments) in a thread, as
# inbound/receive.py parses big messages. A thread hop, with the GIL hand-offs it brings, cost
# more than half of that again: outbound benchmark, server CPU 5.6 ms/msg with every draft in a
# thread, 4.9-5.0 ms/msg with small ones here.
INLINE_BUILD_BYTES = 32 * 1024


def _draft_size(draft: Draft) -> int:
    size = len(draft.text or "") + len(draft.html or "") + sum(len(a.content) for a in draft.attachments)
    return size + sum(len(name) + len(value) for name, value in draft.headers.items())


def _build(submission: Submission, signer: DkimSigner | None) -> tuple[Composed, bytes, NewMessage]:
    composed = compose(submission.draft, domain=submission.domain)
    # RFC 6376 §5: sign the exact bytes that go on the wire; the signatures are prepended.
    raw = (signer.sign(composed.raw) + composed.raw) if signer is not None else composed.raw
    parsed = mime.parse(raw)
    body = parsed.text if parsed.text is not None else (text.html_to_text(parsed.html) if parsed.html else None)
    html = text.sanitize_html(parsed.html) if parsed.html else None
    draft = submission.draft
    blob = new_id("blb_")
    item = NewMessage(
        pk=submission.message_pk or new_id("msg_"),
        inbox_id=submission.inbox_id,
        organization_id=submission.organization_id,
        message_id=composed.message_id,
        direction="sent",
        labels=[model.LABEL_SENT, *submission.labels],
        mail_from=submission.mail_from,
        header_from=parsed.header_from,
        from_address=parsed.from_address,
        to=parsed.to,
        cc=parsed.cc,
        bcc=list(draft.bcc),
        reply_to=parsed.reply_to,
        subject=parsed.subject,
        preview=text.preview(body or "") or None,
        text=body,
        html=html,
        extracted_text=body,
        extracted_html=html,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        headers=parsed.headers,
        attachments=[NewAttachment.of(a) for a in parsed.attachments],
        defects=[],
        auth=None,
        size=len(raw),
        timestamp=utcnow(),
        thread_keys=thread_keys(composed.message_id, draft.in_reply_to, list(draft.references)),
        raw_key=blob,
        raw=raw,
        event_type="message.sent",
    )
    return composed, raw, item


async def submit(
    db: Database,
    submission: Submission,
    signer: DkimSigner | None,
    remote: list[str] | None = None,
    lifetime: timedelta = timedelta(days=5),
    commit: CommitSent | None = None,
    lease: timedelta | None = None,
) -> Submitted:
    """Compose and sign (in a thread for big drafts), then store the sent copy, its thread, its
    message.sent event and the queue items for ``remote`` recipients in one transaction; with
    ``lease`` those items start leased to this process (``Submitted.leased``, for its worker).
    Raises ComposeError for invalid drafts."""
    if _draft_size(submission.draft) <= INLINE_BUILD_BYTES:
        composed, raw, item = _build(submission, signer)
    else:
        composed, raw, item = await asyncio.to_thread(_build, submission, signer)
    sent = SentMessage(item, list(remote or []), composed.smtputf8, lifetime, lease if remote else None)
    if commit is not None:
        (saved,) = await commit([sent])
    else:
        (saved,) = await db.run_write(queue.save_sent, [sent])
    return Submitted(composed.message_id, saved.thread_id, raw, composed.envelope_rcpt, composed.smtputf8, saved.leased)
