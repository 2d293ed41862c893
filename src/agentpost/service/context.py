"""What every use case needs: the store, secrets, the event bus and a few settings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from agentpost.mailauth.dkim import DkimSigner
from agentpost.net.dns import Resolver
from agentpost.notify.bus import EventBus
from agentpost.outbound.submit import CommitSent, Dispatch, NoWorker
from agentpost.proto.memo import SharedCalls
from agentpost.service.dnscheck import DnsSetup
from agentpost.store.db import Database
from agentpost.store.orgs import KeyRecord
from agentpost.store.sending import Sender


class Sealer:
    """Encrypts secrets at rest (webhook secrets, custom headers) and signs download tokens."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("secret_key is empty: run `agentpost init` or set AGENTPOST_SECRET_KEY")
        digest = hashlib.sha256(b"agentpost-seal:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._mac_key = hashlib.sha256(b"agentpost-sign:" + secret_key.encode()).digest()

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def unseal(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("sealed value cannot be decrypted with this secret_key") from None

    def sign(self, claims: dict[str, str | int], ttl: int) -> tuple[str, int]:
        """A URL-safe token carrying ``claims`` until now + ttl seconds."""
        expires = int(time.time()) + ttl
        body = base64.urlsafe_b64encode(json.dumps({**claims, "exp": expires}).encode()).decode().rstrip("=")
        mac = hmac.new(self._mac_key, body.encode(), hashlib.sha256).digest()
        return body + "." + base64.urlsafe_b64encode(mac).decode().rstrip("="), expires

    def verify(self, token: str) -> dict[str, str | int] | None:
        body, _, mac = token.partition(".")
        expected = base64.urlsafe_b64encode(hmac.new(self._mac_key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.decode().rstrip("="), mac):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(claims, dict) or int(claims.get("exp", 0)) < time.time():
            return None
        return claims

    def derive(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (VERP and unsubscribe tokens), derived from the secret key."""
        # The NUL cannot occur in a download token's base64url body: the MAC inputs never collide.
        return hmac.new(self._mac_key, b"derive\0" + purpose.encode(), hashlib.sha256).digest()


@dataclass(slots=True)
class Context:
    db: Database
    sealer: Sealer
    bus: EventBus
    # Called after inboxes or domains change, so routing caches (the MX directory, and through
    # ``directory_changed`` the sending facts of every process) refresh.
    routing_changed: Callable[[], None]
    hostname: str
    public_url: str
    # Hands a signed message to the inbound pipeline for hosted recipients (set by serve).
    deliver_local: Callable[[str, list[str], bytes], Awaitable[None]] | None = None
    # The outbound worker: takes a submission's queue items leased at commit, or is woken (set by serve).
    outbound: Dispatch = field(default_factory=NoWorker)
    # Seconds a message may stay deferred before it bounces (config outbound.lifetime).
    outbound_lifetime: float = 5 * 24 * 3600.0
    # Group commit of sent copies (serve wires one); None commits each send on its own.
    commit_sent: CommitSent | None = None
    # DKIM signers by (domain id, domain, key set): building one loads private keys (milliseconds).
    signers: dict[tuple[str, str, tuple[tuple[str, str], ...]], DkimSigner] = field(default_factory=dict)
    signer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # API key records by key hash, with when they were read (service/auth.py).
    principals: dict[str, tuple[float, KeyRecord]] = field(default_factory=dict)
    principal_reads: SharedCalls[str, KeyRecord | None] = field(default_factory=SharedCalls)
    # Cross-process invalidation of ``principals`` and ``senders``/``receiving`` (serve wires a
    # file every process watches; API keys, inboxes and domains changing replace it).
    directory_epoch: Callable[[], object] = lambda: 0
    directory_changed: Callable[[], None] = lambda: None
    principals_epoch: object = 0
    # What sends know of their inbox, and whether recipient domains are hosted here, with when
    # they were read (service/sending.py).
    senders: dict[str, tuple[float, Sender]] = field(default_factory=dict)
    receiving: dict[str, tuple[float, bool]] = field(default_factory=dict)
    sending_epoch: object = 0
    # List-Unsubscribe + one-click on API sends (config outbound.list_unsubscribe).
    list_unsubscribe: bool = True
    # The [dns] resolver: domain verification looks the published records up through it.
    resolver: Resolver | None = None
    # What the DNS records recommended for hosted domains say (service/dnscheck.py); None: defaults.
    dns_setup: DnsSetup | None = None
    # DKIM rotation (config domains.dkim_rotation_interval, 0: only on request, and
    # domains.dkim_grace_period): seconds between rotations, and how long a replaced key stays published.
    dkim_rotation_interval: float = 182 * 86400.0
    dkim_grace_period: float = 7 * 86400.0
