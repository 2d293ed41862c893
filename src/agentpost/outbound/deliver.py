"""Deliver one queue item: resolve the recipient domain's mail hosts (RFC 5321 §5.1) and try each in turn."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentpost.net.dns import DnsError, NullMx, Resolver, resolve_mx
from agentpost.net.smtpclient import SessionResult, SmtpReply, SmtpSession
from agentpost.proto.codes import Reply

# Local replies for failures that never reached a remote server (RFC 3463 codes).
R451_DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure looking up the recipient domain")
R556_NULL_MX = Reply(556, "5.1.10", "Recipient domain accepts no mail (null MX, RFC 7505)")
R550_NO_MAIL_HOST = Reply(550, "5.1.2", "Recipient domain has no mail host (no MX, no address)")
R451_NO_CONNECTION = Reply(451, "4.4.1", "No mail host of the recipient domain could be reached")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    helo: str
    port: int = 25
    source_address: str | None = None
    timeout: float = 60.0
    tls: str = "opportunistic"


@dataclass
class Delivery:
    """Final reply per recipient, and every session tried (for the attempt log)."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    sessions: list[SessionResult] = field(default_factory=list)


def _all(rcpts: list[str], reply: Reply, detail: str = "") -> dict[str, SmtpReply]:
    local = SmtpReply.local(reply, detail)
    return {r: local for r in rcpts}


async def deliver(
    resolver: Resolver,
    settings: DeliverySettings,
    domain: str,
    mail_from: str,
    rcpts: list[str],
    raw: bytes,
    smtputf8: bool,
) -> Delivery:
    result = Delivery()
    try:
        targets = await resolve_mx(resolver, domain)
    except NullMx:
        result.replies = _all(rcpts, R556_NULL_MX)  # permanent at once, no retries
        return result
    except DnsError as exc:
        result.replies = _all(rcpts, R451_DNS_TEMPORARY, str(exc))
        return result
    if not targets:
        result.replies = _all(rcpts, R550_NO_MAIL_HOST)
        return result
    for target in targets:
        for ip in target.addresses:
            session = SmtpSession(
                target.host,
                ip,
                settings.port,
                helo=settings.helo,
                source_address=settings.source_address,
                timeout=settings.timeout,
                tls=settings.tls,
            )
            try:
                outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
            finally:
                await session.close()
            result.sessions.append(outcome)
            answered = {r: reply for r in rcpts if (reply := outcome.reply_for(r)) is not None}
            if answered and outcome.error is None:
                # A server that answered the transaction is final for this attempt (its 4xx is
                # retried later); only hosts that could not be reached send us to the next one.
                result.replies = answered
                missing = [r for r in rcpts if r not in answered]
                result.replies.update(_all(missing, R451_NO_CONNECTION))
                return result
    result.replies = _all(rcpts, R451_NO_CONNECTION, result.sessions[-1].error or "" if result.sessions else "")
    return result
