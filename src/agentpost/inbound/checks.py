"""Decisions at CONNECT, MAIL and RCPT time: per-IP limits and recipient routing."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from agentpost.inbound.verdict import DEFAULT_POLICY, InboxPolicy
from agentpost.outbound.bounces import AddressTokens, Returned
from agentpost.proto import codes
from agentpost.proto.address import AddressError, parse_path
from agentpost.proto.codes import Reply
from agentpost.store import domains as domain_store
from agentpost.store import inboxes as inbox_store
from agentpost.store import lists as list_store
from agentpost.store.db import Database
from agentpost.store.lists import ListSet


@dataclass(frozen=True, slots=True)
class Route:
    """Where one accepted recipient's copy goes."""

    inbox_id: str
    organization_id: str
    # Set for an address outbound generated (VERP bounces+TOKEN, unsubscribe+TOKEN): the mail
    # goes to outbound.bounces, not to an inbox; inbox_id is then the address itself.
    returned: Returned | None = None
    # The inbox's auth_policy, applied to this copy at DATA (inbound.verdict.decide).
    auth_policy: InboxPolicy = DEFAULT_POLICY
    # The inbox's and its organisation's receive and reply lists, and its default_deny.receive,
    # applied to this copy at DATA (Receiver._apply_lists): a reply is only known from its headers.
    lists: ListSet = list_store.EMPTY
    deny_receive: bool = False


class RateLimiter:
    """Per-IP concurrent connections and messages per minute, in process memory.

    The MX of one process protects itself; cross-process limits for sending live in the store.
    """

    def __init__(self, max_connections: int, max_messages_per_minute: int) -> None:
        self.max_connections = max_connections
        self.max_messages = max_messages_per_minute
        self._connections: dict[str, int] = {}
        self._messages: dict[str, deque[float]] = {}

    def connect(self, ip: str) -> Reply | None:
        count = self._connections.get(ip, 0)
        if count >= self.max_connections:
            return codes.R421_TOO_MANY_CONNECTIONS
        self._connections[ip] = count + 1
        return None

    def disconnect(self, ip: str) -> None:
        count = self._connections.get(ip, 0) - 1
        if count <= 0:
            self._connections.pop(ip, None)
        else:
            self._connections[ip] = count

    def message(self, ip: str, now: float | None = None) -> Reply | None:
        now = time.monotonic() if now is None else now
        window = self._messages.setdefault(ip, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= self.max_messages:
            return codes.R450_RATE_LIMITED
        window.append(now)
        if len(self._messages) > 10000:  # bound memory under a wide scan
            for key in [k for k, v in self._messages.items() if not v][:5000]:
                del self._messages[key]
        return None


class Directory:
    """Hosted domains and inboxes, cached briefly so RCPT does not query the store each time.

    Entries expire after ``ttl`` seconds so inboxes created or deleted by another process (the
    CLI, another node) are seen within that time; a miss always asks the store.
    """

    def __init__(self, db: Database, ttl: float = 5.0, tokens: AddressTokens | None = None) -> None:
        self.db = db
        self.ttl = ttl
        self.tokens = tokens
        self._domains: tuple[float, dict[str, str]] = (0.0, {})
        self._routes: dict[str, tuple[float, Route | Reply]] = {}

    def forget(self) -> None:
        self._routes.clear()
        self._domains = (0.0, {})

    async def hosted_domains(self) -> dict[str, str]:
        expires, value = self._domains
        if time.monotonic() < expires:
            return value
        async with self.db.read() as conn:
            value = await domain_store.hosted(conn)
        self._domains = (time.monotonic() + self.ttl, value)
        return value

    async def inbox(self, address: str) -> Route | Reply | None:
        """The route to the inbox at this address, a refusal when it is paused, or None when there is
        none (uncached: the RCPT decisions built on it are what ``route`` caches)."""
        async with self.db.read() as conn:
            row = await inbox_store.get_row(conn, address.lower())
            if row is None:
                return None
            if row.status == "paused":
                return codes.R550_INBOX_PAUSED
            lists = await list_store.for_inbox(conn, row.organization_id, row.id, ["receive", "reply"])
        deny = bool((row.default_deny or {}).get("receive"))
        return Route(
            row.id, row.organization_id, auth_policy=InboxPolicy.of(row.auth_policy), lists=lists, deny_receive=deny
        )

    async def route(self, rcpt: str) -> Route | Reply:
        """RCPT TO decision (RFC 5321 §3.3): relay denied, no such user, or where it goes."""
        now = time.monotonic()
        hit = self._routes.get(rcpt)
        if hit is not None and now < hit[0]:
            return hit[1]
        decision = await self._route(rcpt)
        if len(self._routes) > 100_000:
            self._routes.clear()
        # A refusal is remembered only briefly: an inbox created a moment ago (by the CLI, another
        # process or node) must start receiving at once, not after the full TTL.
        self._routes[rcpt] = (now + (self.ttl if isinstance(decision, Route) else 0.5), decision)
        return decision

    async def _route(self, rcpt: str) -> Route | Reply:
        try:
            address = parse_path(rcpt)
        except AddressError:
            return codes.R501_SYNTAX_ADDRESS
        if address is None:
            return codes.R501_SYNTAX_ADDRESS
        domains = await self.hosted_domains()
        # Never relay: we are the final destination only for hosted domains.
        if address.domain not in domains and not await self._domain_on_miss(address.domain):
            return codes.R550_RELAY_DENIED
        returned = self.tokens.read(address.local_part) if self.tokens is not None else None
        if returned is not None:
            # Our own VERP or unsubscribe address with a valid token; a forged one falls through
            # to the inbox lookup and is refused as an unknown user (550 5.1.1).
            organization_id = (await self.hosted_domains()).get(address.domain, "")
            return Route(address.key, organization_id, returned)
        found = await self.inbox(address.key)
        return codes.R550_NO_SUCH_USER if found is None else found

    async def _domain_on_miss(self, domain: str) -> bool:
        # A domain added a moment ago by another process (the CLI, another MX process or node)
        # is not in the cached set yet: ask the store for this one domain.
        async with self.db.read() as conn:
            organization_id = await domain_store.receiving(conn, domain)
        if organization_id is None:
            return False
        expires, value = self._domains
        self._domains = (expires, {**value, domain: organization_id})
        return True
