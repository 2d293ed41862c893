"""What a delivery result means: attempts to log, events, suppressions, the queue item's next state, the DSN.

Pure decisions (no I/O): the worker turns a ``Delivery`` into a ``Settlement`` that the store
writes in one transaction with its neighbours; a bounce that arrives later by mail (VERP) goes
through ``bounce_effects`` too, so both paths emit the same events and suppress the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentpost.model import new_id
from agentpost.net.smtpclient import SessionResult, SmtpReply
from agentpost.outbound.deliver import Delivery
from agentpost.proto.dsn import BouncedRecipient, build_dsn, classify
from agentpost.store.queue import QueueItem, Settlement


@dataclass(frozen=True, slots=True)
class Policy:
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
    # Ages (seconds since queued) at which another message.delayed is sent; the first deferral always sends one.
    delay_notices: tuple[float, ...] = (4 * 3600.0, 24 * 3600.0, 48 * 3600.0)


@dataclass(frozen=True, slots=True)
class SentRef:
    """The sent message a result is about."""

    organization_id: str
    inbox_id: str
    thread_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """One recipient that will not get the message: the reply (or report) that says so."""

    rcpt: str
    status: str  # RFC 3463 code, e.g. "5.1.1"
    text: str  # the remote reply or the report's diagnostic
    remote_mta: str | None = None

    @classmethod
    def of(cls, rcpt: str, reply: SmtpReply, remote_mta: str | None = None) -> Refusal:
        return cls(rcpt, reply.enhanced or f"{reply.code // 100}.0.0", str(reply), remote_mta)


def backoff(schedule: tuple[float, ...], attempts: int) -> float:
    """Seconds until the next attempt after ``attempts`` tries (the last value repeats), ±10% jitter
    so a burst deferred together does not come back together."""
    return schedule[min(max(attempts, 1) - 1, len(schedule) - 1)] * random.uniform(0.9, 1.1)


def notices_due(policy: Policy, age: float) -> int:
    """How many message.delayed events should have been sent for a deferral at ``age`` seconds."""
    return 1 + sum(1 for threshold in policy.delay_notices if age >= threshold)


def bounce_effects(
    sent: SentRef, refusals: list[Refusal], *, expired: bool, now: datetime
) -> tuple[tuple[str, str | None, str, dict[str, Any]], list[tuple[str, str, str, str, str | None]]]:
    """The message.bounced event for ``refusals`` and the suppressions it causes.

    Hard bounces (RFC 3463 class 5 with a permanent meaning) are suppressed for the sending
    inbox; a lifetime expiry is Transient (RFC 3464 Action: failed after 4xx) and suppresses nothing.
    """
    first = refusals[0]
    bounce_type, sub_type = classify(first.status, first.text)
    if expired:
        bounce_type = "Transient"
    event = (
        sent.organization_id,
        sent.inbox_id,
        "message.bounced",
        {
            "bounce": {
                "inbox_id": sent.inbox_id,
                "thread_id": sent.thread_id,
                "message_id": sent.message_id,
                "timestamp": now.isoformat(),
                "type": bounce_type,
                "sub_type": sub_type,
                "recipients": [{"address": r.rcpt, "status": r.status} for r in refusals],
            }
        },
    )
    suppressions: list[tuple[str, str, str, str, str | None]] = []
    if not expired:
        for refusal in refusals:
            if classify(refusal.status, refusal.text)[0] == "Permanent":
                suppressions.append((sent.organization_id, sent.inbox_id, refusal.rcpt, "bounced", refusal.text))
    return event, suppressions


def _details(result: Delivery, session: SessionResult | None) -> dict[str, Any] | None:
    """What the attempt log keeps beside the reply: the MTA-STS result (RFC 8461), why TLS was not used or verified."""
    details: dict[str, Any] = {}
    if result.mta_sts is not None:
        details["mta_sts"] = result.mta_sts.details()
    if session is not None and session.tls_failure:
        details["tls_failure"] = session.tls_failure[:2000]
    return details or None


def _attempt(
    item: QueueItem,
    rcpt: str,
    outcome: str,
    reply: SmtpReply,
    session: SessionResult | None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "queue_id": item.id,
        "message_pk": item.message_pk,
        "rcpt": rcpt,
        "outcome": outcome,
        "remote_host": session.host if session else None,
        "remote_ip": session.ip if session else None,
        "code": reply.code,
        "enhanced": reply.enhanced,
        "reply": reply.text[:2000],
        "tls_version": session.tls_version if session else None,
        "tls_verified": session.tls_verified if session else None,
        "duration_ms": int(session.duration * 1000) if session else None,
        "details": details,
    }


def settle_delivery(
    item: QueueItem, result: Delivery, policy: Policy, now: datetime
) -> tuple[Settlement, list[Refusal]]:
    """The settlement of one attempt, and the refusals a DSN should report (empty when none bounced)."""
    session = result.sessions[-1] if result.sessions else None
    delivered = [r for r, reply in result.replies.items() if 200 <= reply.code < 300]
    bounced = {r: reply for r, reply in result.replies.items() if reply.code >= 500}
    deferred = {r: reply for r, reply in result.replies.items() if 400 <= reply.code < 500}
    expired = bool(deferred) and now >= item.expires_at
    if expired:
        bounced.update(deferred)  # lifetime over: the deferral becomes a Transient bounce
        deferred = {}
    settlement = Settlement(item_id=item.id)
    details = _details(result, session)
    for rcpt, reply in result.replies.items():
        outcome = "delivered" if rcpt in delivered else ("bounced" if rcpt in bounced else "deferred")
        settlement.attempts.append(_attempt(item, rcpt, outcome, reply, session, details))
    sent = SentRef(item.organization_id, item.inbox_id, item.thread_id, item.message_id)
    base = {
        "inbox_id": item.inbox_id,
        "thread_id": item.thread_id,
        "message_id": item.message_id,
        "timestamp": now.isoformat(),
    }
    if delivered:
        settlement.events.append(
            (item.organization_id, item.inbox_id, "message.delivered", {"delivery": {**base, "recipients": delivered}})
        )
    remote = session.host if session else None
    refusals = [Refusal.of(rcpt, reply, remote) for rcpt, reply in bounced.items()]
    if refusals:
        event, suppressions = bounce_effects(sent, refusals, expired=expired, now=now)
        settlement.events.append(event)
        settlement.suppressions.extend(suppressions)
    if deferred:
        first = str(next(iter(deferred.values())))
        due = notices_due(policy, (now - item.created_at).total_seconds())
        if due > item.delay_notices:
            payload = {"delay": {**base, "recipients": list(deferred), "reply": first, "attempts": item.attempts}}
            settlement.events.append((item.organization_id, item.inbox_id, "message.delayed", payload))
        settlement.status = "queued"
        settlement.rcpt_to = list(deferred)
        settlement.next_attempt_at = now + timedelta(seconds=backoff(policy.retry_schedule, item.attempts))
        settlement.last_error = first
        settlement.delay_notices = max(due, item.delay_notices)
    else:
        settlement.status = "bounced" if bounced else "delivered"
    return settlement, refusals


def dsn_for(
    item_message_id: str,
    inbox_id: str,
    created_at: datetime,
    raw: bytes,
    refusals: list[Refusal],
    reporting_mta: str,
) -> bytes:
    """An RFC 3464 report for the sender's own inbox (never mailed out: no backscatter)."""
    header_end = raw.find(b"\r\n\r\n")
    headers = raw[: header_end + 2] if header_end >= 0 else raw[:8192]
    recipients = [BouncedRecipient(r.rcpt, r.status, "failed", f"smtp; {r.text}", r.remote_mta) for r in refusals]
    domain = inbox_id.rpartition("@")[2]
    return build_dsn(
        reporting_mta=reporting_mta,
        original_message_id=item_message_id,
        original_headers=headers,
        recipients=recipients,
        arrival_date=created_at,
        from_address=f"mailer-daemon@{domain}",
        to_address=inbox_id,
        message_id=f"<{new_id('dsn_')}@{domain}>",
        human_text="Your message could not be delivered to: " + ", ".join(r.rcpt for r in refusals) + ".",
    )
