"""Mail that comes back to the addresses outbound generates: VERP bounces and unsubscribe requests.

Every remote delivery leaves with a per-message envelope sender ``bounces+TOKEN@<domain>``
(VERP), and every API message names ``unsubscribe+TOKEN@<domain>`` in List-Unsubscribe. TOKEN
is the sent message's id with a truncated HMAC, so the MX can tell at RCPT time, without a
database lookup, that the address is ours and which message it is about; a forged one is
refused like an unknown user (550 5.1.1).

A bounce that arrives later takes the same path as a 5xx during the SMTP session
(``outcomes.bounce_effects``): message.bounced, hard bounces suppressed, a delivery attempt
row, and the report itself placed in the sender's inbox. Nothing is ever mailed back (no
backscatter, RFC 3834 §2).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentpost.model import LABEL_BOUNCE, utcnow
from agentpost.outbound.outcomes import Refusal, SentRef, bounce_effects
from agentpost.proto import mime
from agentpost.proto.address import AddressError, parse_address
from agentpost.proto.dsn import BounceReport, parse_bounce
from agentpost.proto.threads import normalise_msgid
from agentpost.store import messages as message_store
from agentpost.store import queue
from agentpost.store.db import Database
from agentpost.store.messages import NewMessage, Saved
from agentpost.store.queue import Settlement

log = logging.getLogger(__name__)

BOUNCE = "bounces"
UNSUBSCRIBE = "unsubscribe"
_PREFIXES = (BOUNCE, UNSUBSCRIBE)
_MESSAGE_PK = re.compile(r"msg_([0-9a-v]{26})")
# 26 id characters + 16 MAC characters (80 bits), base32hex lowercase: local parts survive MTAs
# that fold case. "unsubscribe+" + 42 = 54 octets, within RFC 5321 §4.5.3.1.1's 64.
_TOKEN = re.compile(r"([0-9a-v]{26})([0-9a-v]{16})")
_MAX_LOCAL_PART = 64
_REPLY_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")


@dataclass(frozen=True, slots=True)
class Returned:
    """What an address of ours stands for: ``kind`` (BOUNCE or UNSUBSCRIBE) about one sent message."""

    kind: str
    message_pk: str


class AddressTokens:
    """Builds and reads ``bounces+TOKEN`` / ``unsubscribe+TOKEN`` local parts (HMAC, purpose-bound)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("address token key is too short")
        self._key = key

    def _mac(self, kind: str, ident: str) -> str:
        digest = hmac.new(self._key, f"{kind}\0{ident}".encode(), hashlib.sha256).digest()[:10]
        return base64.b32hexencode(digest).decode().lower()

    def address(self, kind: str, message_pk: str, domain: str) -> str:
        match = _MESSAGE_PK.fullmatch(message_pk)
        if kind not in _PREFIXES or match is None:
            raise ValueError(f"cannot build a {kind!r} address for {message_pk!r}")
        ident = match.group(1)
        local = f"{kind}+{ident}{self._mac(kind, ident)}"
        assert len(local) <= _MAX_LOCAL_PART
        return f"{local}@{domain}"

    def verp(self, message_pk: str, domain: str) -> str:
        """The envelope sender (RFC 5321 §4.1.2 reverse-path) of one sent message."""
        return self.address(BOUNCE, message_pk, domain)

    def unsubscribe(self, message_pk: str, domain: str) -> str:
        """The RFC 2369 mailto unsubscribe address of one sent message."""
        return self.address(UNSUBSCRIBE, message_pk, domain)

    def read(self, local_part: str) -> Returned | None:
        """The message a local part of ours names, or None (not ours, or a forged token)."""
        kind, plus, token = local_part.lower().partition("+")
        if not plus or kind not in _PREFIXES:
            return None
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        ident, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(kind, ident)):
            return None
        return Returned(kind, f"msg_{ident}")


# --------------------------------------------------------------------------- asynchronous bounces


def _reply_code(diagnostic: str | None) -> int | None:
    if not diagnostic:
        return None
    text = diagnostic.partition(";")[2] if ";" in diagnostic[:12] else diagnostic
    match = _REPLY_CODE.search(text[:200])
    return int(match.group(1)) if match else None


def settle_report(
    sent: SentRef, message_pk: str, report: BounceReport, attempts: list[Any], now: datetime
) -> Settlement:
    """What a bounce report about ``sent`` changes; ``attempts`` are its delivery_attempts rows.

    A reported recipient is matched to a recipient we delivered to (its queue item); when the
    message went to exactly one remote recipient, any reported address is that one (forwarding
    rewrites Final-Recipient). RFC 3464 §2.3.3: Action "delayed" is not a failure: it is logged
    as a deferral with no event. A recipient already bounced is not bounced twice (a report
    retried after a lost 250).
    """
    last: dict[str, Any] = {}
    for row in attempts:
        last[row.rcpt.lower()] = row
    settlement = Settlement()
    refusals: list[Refusal] = []
    seen: set[str] = set()
    for reported in report.recipients:
        row = last.get(reported.address.lower())
        if row is None and len(last) == 1:
            row = next(iter(last.values()))
        if row is None or row.rcpt.lower() in seen:
            continue
        seen.add(row.rcpt.lower())
        delayed = reported.action == "delayed"
        if not delayed and row.outcome == "bounced":
            continue
        status = reported.status or ("4.0.0" if delayed else "5.0.0")
        text = reported.diagnostic or f"{report.kind} report: Status {status}"
        settlement.attempts.append(
            {
                "queue_id": row.queue_id,
                "message_pk": message_pk,
                "rcpt": row.rcpt,
                "outcome": "deferred" if delayed else "bounced",
                "remote_host": (reported.remote_mta or "")[:255] or None,
                "remote_ip": None,
                "code": _reply_code(reported.diagnostic),
                "enhanced": status,
                "reply": text[:2000],
                "tls_version": None,
                "tls_verified": None,
                "duration_ms": None,
            }
        )
        if not delayed:
            refusals.append(Refusal(row.rcpt, status, text, reported.remote_mta))
    if refusals:
        event, suppressions = bounce_effects(sent, refusals, expired=False, now=now)
        settlement.events.append(event)
        settlement.suppressions.extend(suppressions)
    return settlement


def _recipients(row: Any) -> list[str]:
    """The distinct addr-specs (lowercased) a stored message was sent to."""
    found: list[str] = []
    for value in [*(row.to or []), *(row.cc or []), *(row.bcc or [])]:
        try:
            key = parse_address(value).key
        except AddressError:
            continue
        if key not in found:
            found.append(key)
    return found


def unsubscribers(row: Any, senders: list[str]) -> list[str]:
    """Who an unsubscribe mail about the sent message ``row`` unsubscribes.

    RFC 2369 §3.2: the sender of the mail to the mailto URI is the one leaving. Only recipients
    of the message can leave (nobody else was mailed); a message to a single recipient names it,
    whatever address the request comes from (a forwarding mailbox).
    """
    recipients = _recipients(row)
    chosen = [r for r in recipients if r in {s.lower() for s in senders if s}]
    if not chosen and len(recipients) == 1:
        chosen = recipients
    return chosen


CopyFor = Callable[[str, str], NewMessage]  # (inbox_id, organization_id) -> the message as stored there


class ReturnedMail:
    """Acts on mail the MX accepted for a ``Returned`` address; one transaction each."""

    def __init__(self, db: Database, on_commit: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.on_commit = on_commit

    async def _sent(self, message_pk: str) -> tuple[Any, list[Any]] | None:
        async with self.db.read() as conn:
            row = await message_store.get_by_pk(conn, message_pk)
            if row is None or row.direction != "sent":
                return None
            return row, await queue.attempts_for(conn, message_pk)

    async def bounce(self, message_pk: str, raw: bytes, copy_for: CopyFor) -> Saved | None:
        """Record a report that came back to a VERP address, and place it in the sender's inbox.

        Anything that arrives there lands in the inbox (auto-replies go to the envelope sender,
        RFC 3834 §4); if it is a bounce, its effects are written in the same transaction.
        """
        found = await self._sent(message_pk)
        if found is None:
            log.info("mail to the VERP address of %s, which no longer exists: dropped", message_pk)
            return None
        row, attempts = found
        report, copy = await asyncio.to_thread(lambda: (parse_bounce(raw), copy_for(row.inbox_id, row.organization_id)))
        settlement = Settlement()
        if report is not None:
            sent = SentRef(row.organization_id, row.inbox_id, row.thread_id, row.message_id)
            settlement = settle_report(sent, row.id, report, attempts, utcnow())
            if LABEL_BOUNCE not in copy.labels:
                copy.labels = [*copy.labels, LABEL_BOUNCE]
        # The report joins the bounced message's thread, whatever headers the remote MTA wrote.
        original = normalise_msgid(row.message_id)
        if original and original not in copy.thread_keys:
            copy.thread_keys = [*copy.thread_keys, original]
        saved = await self.db.run_write(queue.save_returned, copy, settlement)
        self.on_commit()
        return saved

    async def unsubscribe(self, message_pk: str, mail_from: str, raw: bytes) -> None:
        """Suppress, for the sending inbox, the recipient a mail to the unsubscribe address names."""
        found = await self._sent(message_pk)
        if found is None:
            log.info("unsubscribe mail about %s, which no longer exists: dropped", message_pk)
            return
        row, _ = found
        parsed = await asyncio.to_thread(mime.parse, raw[: 256 * 1024])
        leaving = unsubscribers(row, [mail_from, parsed.from_address])
        if not leaving:
            log.info("unsubscribe mail about %s from %s names no recipient: ignored", message_pk, mail_from[:320])
            return
        reply = f"unsubscribe mail (RFC 2369) from {(mail_from or parsed.from_address)[:320]}"
        settlement = Settlement(
            suppressions=[(row.organization_id, row.inbox_id, a, "unsubscribed", reply) for a in leaving]
        )
        await self.db.run_write(queue.settle, [settlement])
