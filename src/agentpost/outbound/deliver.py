"""Deliver one queue item: resolve the recipient domain's mail hosts (RFC 5321 §5.1), or take the
smarthost, and try each in turn over a pooled session."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from agentpost.net.dns import DnsError, MxTarget, NullMx, Resolver, resolve_mx
from agentpost.net.smtpclient import SessionResult, SmtpReply, SmtpSession
from agentpost.outbound.connections import ConnectionPool
from agentpost.proto.codes import Reply

# Local replies for failures that never reached a remote server (RFC 3463 codes).
R451_DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure looking up the recipient domain")
R556_NULL_MX = Reply(556, "5.1.10", "Recipient domain accepts no mail (null MX, RFC 7505)")
R550_NO_MAIL_HOST = Reply(550, "5.1.2", "Recipient domain has no mail host (no MX, no address)")
R451_NO_CONNECTION = Reply(451, "4.4.1", "No mail host of the recipient domain could be reached")


@dataclass(frozen=True, slots=True)
class Smarthost:
    """Relay every message through one host (port 25 blocked, or a provider's relay)."""

    host: str
    port: int = 587
    tls: str = "require"  # require (STARTTLS) | implicit | none
    credentials: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    helo: str
    port: int = 25
    source_address: str | None = None
    timeout: float = 60.0
    tls: str = "opportunistic"
    smarthost: Smarthost | None = None


class MxCache:
    """Recent MX answers per domain, so a burst to one domain asks DNS once (positive answers only:
    failures are asked again on the next attempt)."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, list[MxTarget]]] = {}

    async def targets(self, resolver: Resolver, domain: str) -> list[MxTarget]:
        key = domain.lower()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            return entry[1]
        targets = await resolve_mx(resolver, domain)
        if targets:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (now, targets)
        return targets


@dataclass
class Delivery:
    """Final reply per recipient, and every session tried (for the attempt log)."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    sessions: list[SessionResult] = field(default_factory=list)


def _all(rcpts: list[str], reply: Reply, detail: str = "") -> dict[str, SmtpReply]:
    local = SmtpReply.local(reply, detail)
    return {r: local for r in rcpts}


async def _smarthost_targets(resolver: Resolver, relay: Smarthost) -> list[MxTarget]:
    try:
        ipaddress.ip_address(relay.host)
    except ValueError:
        return [MxTarget(relay.host, 0, await resolver.a(relay.host), implicit=True)]
    return [MxTarget(relay.host, 0, [relay.host], implicit=True)]


async def deliver(
    resolver: Resolver,
    settings: DeliverySettings,
    domain: str,
    mail_from: str,
    rcpts: list[str],
    raw: bytes,
    smtputf8: bool,
    pool: ConnectionPool | None = None,
    mx_cache: MxCache | None = None,
    source_address: str | None = None,
) -> Delivery:
    """``source_address`` overrides the settings' one (a sending domain with an address of its own)."""
    result = Delivery()
    relay = settings.smarthost
    source = source_address or settings.source_address
    try:
        if relay is not None:
            targets = await _smarthost_targets(resolver, relay)
        elif mx_cache is not None:
            targets = await mx_cache.targets(resolver, domain)
        else:
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
    port = relay.port if relay is not None else settings.port
    for target in targets:
        for ip in target.addresses:

            def factory(host: str = target.host, ip: str = ip) -> SmtpSession:
                return SmtpSession(
                    host,
                    ip,
                    port,
                    helo=settings.helo,
                    source_address=source,
                    timeout=settings.timeout,
                    tls=relay.tls if relay is not None else settings.tls,
                    credentials=relay.credentials if relay is not None else None,
                )

            if pool is not None:
                async with pool.session((target.host, ip, port, source), factory) as session:
                    reused = session.connected
                    outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
                if reused and outcome.error is not None and not outcome.recipients:
                    # The server closed the idle session meanwhile: that says nothing about this
                    # message, so try once more on a new connection before counting a failure.
                    async with pool.session((target.host, ip, port, source), factory, fresh=True) as session:
                        outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
            else:
                session = factory()
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
