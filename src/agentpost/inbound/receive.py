"""The receive pipeline, the only writer of received mail: parse, label, thread, store, notify."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses
from typing import Any

from agentpost import model
from agentpost.errors import Rejected
from agentpost.inbound import verdict as verdicts
from agentpost.inbound.authenticate import Authenticator, AuthResults
from agentpost.inbound.checks import Route
from agentpost.model import Envelope, new_id
from agentpost.outbound.bounces import BOUNCE, ReturnedMail
from agentpost.proto import authresults, codes, mime, text
from agentpost.proto.threads import thread_keys
from agentpost.store import lists as list_store
from agentpost.store.db import Database
from agentpost.store.group_commit import GroupCommitter
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


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of authentication for one accepted message: what prepare() records."""

    auth: dict[str, Any]  # the API's ``auth`` object
    header: bytes  # Authentication-Results, prepended to the stored message
    labels: tuple[str, ...] = ()


_HEADERS = BytesHeaderParser(policy=email_policy.compat32)
_MSGID = re.compile(r"<[^<>\s]{1,998}>")


def _author_and_references(raw: bytes, mail_from: str) -> tuple[str, list[str]]:
    """The From address (else the envelope sender) and the message ids of In-Reply-To and References
    (RFC 5322 §3.6.4), read from the header section only."""
    headers = _HEADERS.parsebytes(raw)
    found = [addr for _, addr in getaddresses([str(v) for v in headers.get_all("from", [])]) if "@" in addr]
    author = found[0].lower() if found else mail_from.lower()
    text = " ".join(str(v) for v in [*headers.get_all("in-reply-to", []), *headers.get_all("references", [])])
    return author, _MSGID.findall(text)[-100:]


class Receiver:
    """inbound.receive: turns one accepted SMTP transaction into stored, threaded messages."""

    def __init__(
        self,
        db: Database,
        hostname: str,
        limits: mime.MimeLimits,
        committer: GroupCommitter[NewMessage, Saved],
        returned: ReturnedMail | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.db = db
        self.hostname = hostname
        self.limits = limits
        self.committer = committer
        # Mail to our VERP and unsubscribe addresses (routes with ``returned`` set).
        self.returned = returned
        # Sender authentication (SPF, DKIM, DMARC) before the 250; None when [mx] authenticate is off.
        self.authenticator = authenticator

    async def receive(self, envelope: Envelope, raw: bytes, routes: list[Route], *, internal: bool = False) -> Receipt:
        """Authenticate, decide, parse, label and thread one message for each routed inbox; return
        after the commit. ``internal``: a local delivery from our own outbound (not checked)."""
        if not routes:
            raise Rejected(codes.R554_NO_VALID_RECIPIENTS, "no routed recipients")
        routes = await self._apply_lists(envelope, raw, routes, internal)
        if not routes:  # our own outbound, refused by every recipient's lists: nothing to store
            return Receipt("", [])
        checked = None
        per_route: list[Checked] | None = None
        if self.authenticator is not None:
            auth = await self.authenticator.authenticate(envelope, raw, internal=internal)
            routes, per_route = self._apply_policies(envelope, auth, routes)
            checked = per_route[0]
        # RFC 8601 §5: Authentication-Results fields claiming our authserv-id were not added by us.
        raw = authresults.remove_ours(raw, self.hostname)
        stored = [
            await self._returned(envelope, raw, r, per_route[i] if per_route else None)
            for i, r in enumerate(routes)
            if r.returned is not None
        ]
        if per_route is not None:
            per_route = [c for c, r in zip(per_route, routes, strict=True) if r.returned is None]
        routes = [r for r in routes if r.returned is None]
        returned = [s for s in stored if s is not None]
        if not routes:
            return Receipt("", returned)
        if len(raw) > OFFLOAD_PARSE_BYTES:
            items = await asyncio.to_thread(self.prepare, envelope, raw, routes, checked, per_route)
        else:
            items = self.prepare(envelope, raw, routes, checked, per_route)
        saved = await self.committer.commit(items)
        return Receipt(items[0].message_id, [(r.inbox_id, s) for r, s in zip(routes, saved, strict=True)] + returned)

    async def _apply_lists(self, envelope: Envelope, raw: bytes, routes: list[Route], internal: bool) -> list[Route]:
        """The routes whose receive lists admit the sender; raises ``Rejected`` (550 5.7.1) when none do.

        The sender is the RFC 5322 From address (what the agent sees and DMARC authenticates), else
        the envelope sender. Mail whose In-Reply-To or References names a message the inbox sent is
        a reply: the ``reply`` lists decide it first, then the ``receive`` lists; other mail only the
        ``receive`` lists. No entry: ``default_deny.receive`` decides. As with auth policies (RFC 5321
        §4.2.5, one reply to DATA), recipients that refuse are skipped silently when others accept.
        Our own outbound (``internal``) refused by everyone is dropped, not refused: the send has
        already been accepted.
        """
        guarded = [r for r in routes if r.returned is None and (r.lists or r.deny_receive)]
        if not guarded:
            return routes
        sender, referenced = _author_and_references(raw, envelope.mail_from)
        refused: set[str] = set()
        for route in guarded:
            decision = None
            if referenced and (route.lists.has("reply") or route.deny_receive):
                async with self.db.read() as conn:
                    if await list_store.answers_sent(conn, route.inbox_id, referenced):
                        decision = route.lists.decide("reply", sender)
            if decision is None:
                decision = route.lists.decide("receive", sender)
            if decision == "block" or (decision is None and route.deny_receive):
                refused.add(route.inbox_id)
        if not refused:
            return routes
        kept = [r for r in routes if r.inbox_id not in refused]
        log.info(
            "message from %s <%s> refused by the lists of %s", envelope.client_ip, sender, ", ".join(sorted(refused))
        )
        if not kept and not internal:
            raise Rejected(codes.R550_SENDER_BLOCKED, f"sender {sender} refused by the lists of {sorted(refused)}")
        return kept

    def _apply_policies(
        self, envelope: Envelope, auth: AuthResults, routes: list[Route]
    ) -> tuple[list[Route], list[Checked]]:
        """Each recipient inbox's verdict under its own ``auth_policy``: the routes to store for, each with
        what to record; raises ``Rejected`` when no recipient accepts.

        RFC 5321 §4.2.5 allows one reply to DATA for the whole transaction. When the policies disagree
        (one inbox refuses a p=reject failure, another quarantines it) the message is accepted for the
        inboxes that take it and silently not stored for the ones that refuse it: refusing everyone would
        deny it to inboxes that asked for it, and a bounce for the others would be backscatter to the
        forged sender. Only when every recipient refuses does the sender get the refusal, temporary
        (451) if any of them is.
        """
        header = auth.header()
        decided: dict[verdicts.InboxPolicy, verdicts.Verdict] = {}
        kept: list[tuple[Route, Checked]] = []
        refusals: list[verdicts.Verdict] = []
        skipped: list[str] = []
        for route in routes:
            # Our own VERP and unsubscribe addresses keep the default policy.
            policy = route.auth_policy if route.returned is None else verdicts.DEFAULT_POLICY
            verdict = decided.get(policy)
            if verdict is None:
                verdict = decided[policy] = verdicts.decide(auth, policy)
            if verdict.reply is not None:
                refusals.append(verdict)
                skipped.append(route.inbox_id)
                continue
            kept.append((route, Checked(auth.as_dict(verdict.verdict, verdict.reasons), header, verdict.labels)))
        if not kept:
            refusal = next((v for v in refusals if v.reply is not None and v.reply.temporary), refusals[0])
            assert refusal.reply is not None
            raise Rejected(refusal.reply, f"{refusal.verdict}: {refusal.reason}")
        if refusals:
            log.info(
                "message from %s not stored for %s (their auth_policy refuses it: %s)",
                envelope.client_ip,
                ", ".join(skipped),
                refusals[0].reason,
            )
        return [route for route, _ in kept], [c for _, c in kept]

    async def _returned(
        self, envelope: Envelope, raw: bytes, route: Route, checked: Checked | None = None
    ) -> tuple[str, Saved] | None:
        """Mail to a VERP address (a bounce, or an auto-reply to the envelope sender) or to an
        unsubscribe address; never answered (no backscatter)."""
        if route.returned is None or self.returned is None:
            return None
        if route.returned.kind != BOUNCE:
            await self.returned.unsubscribe(route.returned.message_pk, envelope.mail_from, raw)
            return None

        def copy_for(inbox_id: str, organization_id: str) -> NewMessage:
            return self.prepare(envelope, raw, [Route(inbox_id, organization_id)], checked)[0]

        saved = await self.returned.bounce(route.returned.message_pk, raw, copy_for)
        return (route.inbox_id, saved) if saved is not None else None

    def prepare(
        self,
        envelope: Envelope,
        raw: bytes,
        routes: list[Route],
        checked: Checked | None = None,
        per_route: list[Checked] | None = None,
    ) -> list[NewMessage]:
        """One stored copy per route; ``per_route`` (same order) gives each copy its own verdict and labels,
        ``checked`` the Authentication-Results header they share."""
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
        # RFC 8601 §4: our Authentication-Results goes on top of the message, below our Received.
        stored_raw = self.trace_header(envelope, blob_key) + (checked.header if checked else b"") + raw
        message_id = parsed.message_id or f"<{blob_key}@{self.hostname}>"
        keys = thread_keys(parsed.message_id, parsed.in_reply_to, parsed.references)
        attachments = [NewAttachment.of(a) for a in parsed.attachments]
        items = []
        for index, route in enumerate(routes):
            mine = per_route[index] if per_route is not None else checked
            items.append(
                NewMessage(
                    pk=new_id("msg_"),
                    inbox_id=route.inbox_id,
                    organization_id=route.organization_id,
                    message_id=message_id,
                    direction="received",
                    labels=labels + list(mine.labels) if mine is not None else labels,
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
                    auth=mine.auth if mine is not None else None,
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
