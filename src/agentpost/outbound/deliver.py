"""Deliver one queue item: resolve the recipient domain's mail hosts (RFC 5321 §5.1) and its MTA-STS policy
(RFC 8461), or take the smarthost, and try each host in turn over a pooled session."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from agentpost.net.dns import DnsError, MxTarget, NullMx, Resolver, resolve_mx
from agentpost.net.mtasts import CachedPolicy, PolicyCache
from agentpost.net.smtpclient import SessionResult, SmtpReply, SmtpSession
from agentpost.outbound.connections import ConnectionPool
from agentpost.proto.codes import Reply

# Local replies for failures that never reached a remote server (RFC 3463 codes).
R451_DNS_TEMPORARY = Reply(451, "4.4.3", "Temporary DNS failure looking up the recipient domain")
R556_NULL_MX = Reply(556, "5.1.10", "Recipient domain accepts no mail (null MX, RFC 7505)")
R550_NO_MAIL_HOST = Reply(550, "5.1.2", "Recipient domain has no mail host (no MX, no address)")
R451_NO_CONNECTION = Reply(451, "4.4.1", "No mail host of the recipient domain could be reached")
# RFC 8461 §5: under an "enforce" policy, mail goes only to a listed MX over verified TLS; otherwise it
# waits (a temporary failure, retried: the policy or the MX may be fixed meanwhile), never in clear.
R451_MTA_STS = Reply(451, "4.7.5", "MTA-STS policy of the recipient domain not met")


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
    # RFC 8461: honour recipient domains' MTA-STS policies (never through a smarthost).
    mta_sts: bool = True
    mta_sts_ca_file: str | None = None  # PEM CAs trusted besides the system store (policy hosts, MX under a policy)
    mta_sts_port: int = 443  # tests only: RFC 8461 §3.3 fixes 443


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


@dataclass(frozen=True, slots=True)
class MtaStsResult:
    """The MTA-STS policy a delivery ran under, and whether the host used met it (RFC 8461 §5)."""

    mode: str  # enforce | testing
    policy_id: str
    failure: str | None = None  # None: the MX matched the policy and its certificate verified

    def details(self) -> dict[str, Any]:
        found: dict[str, Any] = {"mode": self.mode, "policy_id": self.policy_id}
        found["result"] = "failure" if self.failure else "success"
        if self.failure:
            found["failure"] = self.failure
        return found


@dataclass
class Delivery:
    """Final reply per recipient, every session tried (for the attempt log), and the MTA-STS result."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    sessions: list[SessionResult] = field(default_factory=list)
    mta_sts: MtaStsResult | None = None


def _all(rcpts: list[str], reply: Reply, detail: str = "") -> dict[str, SmtpReply]:
    local = SmtpReply.local(reply, detail)
    return {r: local for r in rcpts}


async def _smarthost_targets(resolver: Resolver, relay: Smarthost) -> list[MxTarget]:
    try:
        ipaddress.ip_address(relay.host)
    except ValueError:
        return [MxTarget(relay.host, 0, await resolver.a(relay.host), implicit=True)]
    return [MxTarget(relay.host, 0, [relay.host], implicit=True)]


def _policy_failure(policy: CachedPolicy, outcome: SessionResult) -> str | None:
    """Why the session ``outcome`` did not meet ``policy`` (RFC 8461 §4.1, §4.2), or None when it did."""
    if not policy.policy.allows(outcome.host):
        return f"MX host {outcome.host} does not match the policy (mx: {', '.join(policy.policy.mx)})"
    if outcome.tls_version is None:
        return outcome.tls_failure or f"no TLS with {outcome.host}"
    if not outcome.tls_verified:
        return outcome.tls_failure or f"certificate not verified for {outcome.host}"
    return None


async def _policy(mta_sts: PolicyCache | None, domain: str) -> CachedPolicy | None:
    if mta_sts is None:
        return None
    policy = await mta_sts.policy(domain)
    # RFC 8461 §5: mode "none" is treated as having no policy.
    return policy if policy is not None and policy.mode in ("enforce", "testing") else None


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
    mta_sts: PolicyCache | None = None,
) -> Delivery:
    """``source_address`` overrides the settings' one (a sending domain with an address of its own).

    With ``mta_sts`` (and no smarthost) the recipient domain's policy applies: under "enforce" only MX hosts
    the policy lists are tried, over STARTTLS with a certificate verified for the MX name, and a failure is
    a 4.7.5 deferral; under "testing" delivery goes on as usual and the failure is only recorded.
    """
    result = Delivery()
    relay = settings.smarthost
    source = source_address or settings.source_address
    policy: CachedPolicy | None = None
    try:
        if relay is not None:
            targets = await _smarthost_targets(resolver, relay)
        else:
            lookup = mx_cache.targets(resolver, domain) if mx_cache is not None else resolve_mx(resolver, domain)
            # The policy lookup never fails (a failure is "no policy"): run it beside the MX lookup.
            targets, policy = await asyncio.gather(lookup, _policy(mta_sts, domain))
    except NullMx:
        result.replies = _all(rcpts, R556_NULL_MX)  # permanent at once, no retries
        return result
    except DnsError as exc:
        result.replies = _all(rcpts, R451_DNS_TEMPORARY, str(exc))
        return result
    if not targets:
        result.replies = _all(rcpts, R550_NO_MAIL_HOST)
        return result
    enforce = policy is not None and policy.mode == "enforce"
    if policy is not None and enforce:
        # RFC 8461 §4.1: MX hosts that match no "mx" pattern are not tried at all.
        allowed = [target for target in targets if policy.policy.allows(target.host)]
        if not allowed:
            hosts = ", ".join(target.host for target in targets)
            failure = f"no MX host of {domain} ({hosts}) matches the policy (mx: {', '.join(policy.policy.mx)})"
            result.mta_sts = MtaStsResult(policy.mode, policy.id, failure)
            result.replies = _all(rcpts, R451_MTA_STS, failure)
            return result
        targets = allowed
    port = relay.port if relay is not None else settings.port
    # Sessions opened under a policy are kept apart in the pool: an opportunistic session must never
    # carry mail for an "enforce" domain.
    tag = policy.mode if policy is not None else ""
    for target in targets:
        for ip in target.addresses:

            def factory(host: str = target.host, ip: str = ip) -> SmtpSession:
                if relay is not None:
                    tls, credentials = relay.tls, relay.credentials
                else:
                    # RFC 8461 §4.2: under "enforce", STARTTLS with a certificate valid for the MX name, or nothing.
                    tls, credentials = ("require" if enforce else settings.tls), None
                return SmtpSession(
                    host,
                    ip,
                    port,
                    helo=settings.helo,
                    source_address=source,
                    timeout=settings.timeout,
                    tls=tls,
                    tls_context=mta_sts.context if mta_sts is not None and policy is not None else None,
                    require_verified_cert=enforce,
                    credentials=credentials,
                )

            key = (target.host, ip, port, source, tag)
            if pool is not None:
                async with pool.session(key, factory) as session:
                    reused = session.connected
                    outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
                if reused and outcome.error is not None and not outcome.recipients:
                    # The server closed the idle session meanwhile: that says nothing about this
                    # message, so try once more on a new connection before counting a failure.
                    async with pool.session(key, factory, fresh=True) as session:
                        outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
            else:
                session = factory()
                try:
                    outcome = await session.send(mail_from, rcpts, raw, smtputf8=smtputf8)
                finally:
                    await session.close()
            result.sessions.append(outcome)
            if policy is not None:
                result.mta_sts = MtaStsResult(policy.mode, policy.id, _policy_failure(policy, outcome))
            answered = {r: reply for r in rcpts if (reply := outcome.reply_for(r)) is not None}
            if answered and outcome.error is None:
                # A server that answered the transaction is final for this attempt (its 4xx is
                # retried later); only hosts that could not be reached send us to the next one.
                result.replies = answered
                missing = [r for r in rcpts if r not in answered]
                result.replies.update(_all(missing, R451_NO_CONNECTION))
                return result
    last = result.sessions[-1] if result.sessions else None
    if enforce and last is not None and any(s.tls_failure for s in result.sessions):
        # No listed MX offered verified TLS: defer with the policy's reason, never fall back to clear text.
        failure = next(s.tls_failure for s in reversed(result.sessions) if s.tls_failure)
        result.replies = _all(rcpts, R451_MTA_STS, f"{failure}")
        return result
    result.replies = _all(rcpts, R451_NO_CONNECTION, (last.error or "") if last is not None else "")
    return result
