"""MTA-STS (RFC 8461) for mail we send: discover, fetch, parse and cache a recipient domain's policy, match MX hosts."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from agentpost.net.dns import DnsError, Resolver, to_ascii
from agentpost.proto.memo import SharedCalls

log = logging.getLogger(__name__)

MODES = ("enforce", "testing", "none")
# RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year).
MAX_AGE_CAP = 31_557_600
# RFC 8461 §3.3: senders may limit the size of the policy body; 64 KiB is far above any real policy.
MAX_POLICY_SIZE = 64 * 1024
POLICY_PATH = "/.well-known/mta-sts.txt"

# RFC 8461 §3.1: sts-id = 1*32(ALPHA / DIGIT).
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
# RFC 8461 §3.1: sts-field-name = ALPHA *31(ALPHA / DIGIT / "_" / "-" / "."), value without ";", "=" or controls.
_TXT_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]{1,})")
# RFC 8461 §3.2: policy field names and values (sts-policy-ext-name / -value, mx = ["*."] Domain).
_POLICY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class PolicyFetchError(Exception):
    """No policy could be fetched, or it was not valid: RFC 8461 reads this as "no (new) policy", never an error."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The body of a policy (RFC 8461 §3.2)."""

    mode: str  # enforce | testing | none
    mx: tuple[str, ...]  # patterns, lower case, without the final dot
    max_age: int  # seconds, at most MAX_AGE_CAP

    def allows(self, host: str) -> bool:
        """Whether the MX ``host`` matches one of the policy's ``mx`` patterns (RFC 8461 §4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A policy fetched for ``domain`` under the TXT record's ``id``; valid ``max_age`` seconds from ``fetched_at``."""

    domain: str
    id: str
    policy: Policy
    fetched_at: datetime

    @property
    def mode(self) -> str:
        return self.policy.mode

    @property
    def expires_at(self) -> datetime:
        return self.fetched_at + timedelta(seconds=self.policy.max_age)

    def valid(self, now: datetime) -> bool:
        return now < self.expires_at


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: case-insensitive equality, or a leading "*." standing for exactly one left-most label."""
    pattern = pattern.rstrip(".").lower()
    host = host.rstrip(".").lower()
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_record(records: Iterable[str]) -> str | None:
    """The policy ``id`` from the TXT records of ``_mta-sts.<domain>``, or None: no policy.

    RFC 8461 §3.1: records that do not begin with "v=STSv1;" are discarded; unless exactly one remains,
    and it is valid, the domain has no available policy.
    """
    candidates = [r for r in records if r.startswith("v=STSv1;")]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        match = _TXT_FIELD.fullmatch(part)
        if match is None:
            return None
        fields.setdefault(match.group(1), match.group(2))
    policy_id = fields.get("id", "")
    if fields.get("v") != "STSv1" or not _ID.fullmatch(policy_id):
        return None
    return policy_id


def _valid_pattern(pattern: str) -> bool:
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def parse_policy(text: str) -> Policy | None:
    """The policy in ``text`` (the body of mta-sts.txt), or None when it is not a valid STSv1 policy.

    RFC 8461 §3.2: "key: value" lines ending in CRLF (LF alone accepted, as every implementation does);
    unknown keys are ignored; "mx" may repeat; for other keys the first occurrence counts. version, mode and
    max_age are required, and at least one mx unless the mode is "none".
    """
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw_line in text.split("\n"):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        key = key.strip(" \t")
        value = value.strip(" \t")
        if not colon or not _POLICY_KEY.fullmatch(key):
            return None
        if key == "mx":
            pattern = value.rstrip(".").lower()
            if not _valid_pattern(pattern):
                return None
            mx.append(pattern)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        return None
    mode = fields.get("mode", "")
    if mode not in MODES:
        return None
    max_age_text = fields.get("max_age", "")
    # RFC 8461 §3.2: max_age = 1*10DIGIT; larger values than the cap are read as the cap.
    if not (max_age_text.isascii() and max_age_text.isdigit() and len(max_age_text) <= 10):
        return None
    if not mx and mode != "none":
        return None
    return Policy(mode, tuple(dict.fromkeys(mx)), min(int(max_age_text), MAX_AGE_CAP))


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies certificates and host names (RFC 8461 §3.3 and §4.2: PKIX, TLS 1.2 or later),
    on the system's CA store plus ``ca_file`` (PEM) when given."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _media_type(value: str) -> str:
    return value.partition(";")[0].strip().lower()


class PolicyFetcher:
    """Fetches ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (RFC 8461 §3.3).

    The host name is resolved through our resolver and the connection made to that address, while TLS sends
    the name as SNI and checks the certificate against it. No redirects, no HTTP caching, no proxy from the
    environment; the body is capped at ``max_size`` and the whole fetch at ``timeout`` seconds.
    ``port`` other than 443 exists for tests only.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        context: ssl.SSLContext | None = None,
        port: int = 443,
        timeout: float = 20.0,
        max_size: int = MAX_POLICY_SIZE,
    ) -> None:
        self.resolver = resolver
        self.context = context or tls_context()
        self.port = port
        self.timeout = timeout
        self.max_size = max_size

    async def fetch(self, domain: str) -> Policy:
        import httpx  # here: only MTA-STS policy fetches need it (~6 MB per process otherwise)

        host = "mta-sts." + to_ascii(domain)
        try:
            addresses = await self.resolver.a(host)
        except DnsError as exc:
            raise PolicyFetchError(f"{host}: {exc}") from exc
        if not addresses:
            raise PolicyFetchError(f"{host} has no address")
        failures: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                for ip in addresses:
                    try:
                        return await self._fetch_from(host, ip)
                    except httpx.TransportError as exc:
                        # Unreachable or a failed handshake at this address: the next one may serve the policy.
                        failures.append(f"{ip}: {type(exc).__name__}: {exc}")
        except TimeoutError:
            failures.append(f"timed out after {self.timeout:g}s")
        raise PolicyFetchError(f"https://{host}{POLICY_PATH}: " + "; ".join(failures))

    async def _fetch_from(self, host: str, ip: str) -> Policy:
        import httpx

        literal = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
        url = f"https://{literal}:{self.port}{POLICY_PATH}"
        authority = host if self.port == 443 else f"{host}:{self.port}"
        where = f"https://{authority}{POLICY_PATH}"
        async with (
            httpx.AsyncClient(
                verify=self.context, follow_redirects=False, trust_env=False, timeout=self.timeout
            ) as client,
            client.stream(
                "GET",
                url,
                headers={"Host": authority, "Cache-Control": "no-cache"},
                extensions={"sni_hostname": host},
            ) as response,
        ):
            # RFC 8461 §3.3: a 3xx is not followed; only a 200 carries a policy.
            if response.status_code != 200:
                raise PolicyFetchError(f"{where}: HTTP {response.status_code}")
            media_type = _media_type(response.headers.get("content-type", ""))
            # RFC 8461 §3.2: the policy is served as text/plain.
            if media_type != "text/plain":
                raise PolicyFetchError(f"{where}: media type {media_type or 'missing'}, not text/plain")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_size:
                raise PolicyFetchError(f"{where}: policy larger than {self.max_size} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_size:
                    raise PolicyFetchError(f"{where}: policy larger than {self.max_size} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyFetchError(f"{where}: policy is not UTF-8") from exc
        policy = parse_policy(text)
        if policy is None:
            raise PolicyFetchError(f"{where}: not a valid STSv1 policy")
        return policy


class PolicyStore(Protocol):
    """Where fetched policies outlive the process (RFC 8461 §5.1: a restart must keep enforcing)."""

    async def load(self, domain: str) -> CachedPolicy | None: ...

    async def save(self, cached: CachedPolicy) -> None: ...


class Fetcher(Protocol):
    async def fetch(self, domain: str) -> Policy: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PolicyCache:
    """The policy to apply to a recipient domain, following RFC 8461 §5.1.

    A cached, unexpired policy is used while the TXT record's id is unchanged; a new id (or none cached)
    means a fetch; when discovery or the fetch fails, the cached policy still applies, and without one
    the domain has no policy. Policies are kept in memory and in ``store``. The TXT record is asked again
    at most every ``recheck`` seconds per domain, and concurrent lookups for one domain share one.
    Never raises: every failure reads as "no new policy".
    """

    def __init__(
        self,
        resolver: Resolver,
        fetcher: Fetcher,
        *,
        store: PolicyStore | None = None,
        context: ssl.SSLContext | None = None,
        recheck: float = 60.0,
        max_entries: int = 10_000,
        now: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.fetcher = fetcher
        self.store = store
        # The context MX certificates are verified with when a policy applies (RFC 8461 §4.2).
        self.context = context or tls_context()
        self.recheck = recheck
        self.max_entries = max_entries
        self.now = now
        self.monotonic = monotonic
        self._policies: dict[str, CachedPolicy] = {}
        self._loaded: set[str] = set()  # domains already looked up in the store by this process
        self._checked: dict[str, float] = {}  # domain -> when its TXT record was last asked (monotonic)
        self._pending: SharedCalls[str, CachedPolicy | None] = SharedCalls()  # one discovery per domain

    async def policy(self, domain: str) -> CachedPolicy | None:
        """The policy to apply to mail for ``domain``, or None (no policy: deliver as without MTA-STS)."""
        try:
            domain = to_ascii(domain)
        except DnsError:
            return None
        checked = self._checked.get(domain)
        if checked is not None and self.monotonic() - checked < self.recheck:
            return self._current(domain)
        return await self._pending.call(domain, lambda: self._discover(domain))

    def _current(self, domain: str) -> CachedPolicy | None:
        cached = self._policies.get(domain)
        if cached is not None and not cached.valid(self.now()):
            del self._policies[domain]  # RFC 8461 §5.1: an expired policy is no policy
            return None
        return cached

    async def _discover(self, domain: str) -> CachedPolicy | None:
        try:
            return await self._refresh(domain)
        except Exception:
            log.exception("MTA-STS lookup for %s failed", domain)
            return self._current(domain)

    async def _refresh(self, domain: str) -> CachedPolicy | None:
        if domain not in self._loaded and self.store is not None:
            try:
                stored = await self.store.load(domain)
            except Exception:
                log.exception("could not read the cached MTA-STS policy of %s", domain)
            else:
                self._loaded.add(domain)
                if stored is not None and domain not in self._policies:
                    self._remember(stored)
        cached = self._current(domain)
        try:
            records = await self.resolver.txt("_mta-sts." + domain)
        except DnsError as exc:
            # RFC 8461 §5.1: when no live policy can be discovered, an unexpired cached one still applies.
            log.info("MTA-STS: TXT lookup for %s failed (%s); %s", domain, exc, _using(cached))
            self._mark_checked(domain)
            return cached
        self._mark_checked(domain)
        policy_id = parse_record(records)
        if policy_id is None:
            # RFC 8461 §3.1: the absence of a usable TXT record does not remove a cached policy.
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        try:
            policy = await self.fetcher.fetch(domain)
        except PolicyFetchError as exc:
            # RFC 8461 §5.1: a failed fetch keeps an unexpired cached policy; without one, no policy.
            log.warning("MTA-STS: no policy fetched for %s (%s); %s", domain, exc, _using(cached))
            return cached
        fresh = CachedPolicy(domain, policy_id, policy, self.now())
        self._remember(fresh)
        if self.store is not None:
            try:
                await self.store.save(fresh)
            except Exception:
                log.exception("could not store the MTA-STS policy of %s", domain)
        return fresh

    def _remember(self, cached: CachedPolicy) -> None:
        if len(self._policies) >= self.max_entries and cached.domain not in self._policies:
            now = self.now()
            for domain in [d for d, p in self._policies.items() if not p.valid(now)]:
                del self._policies[domain]
            while len(self._policies) >= self.max_entries:
                del self._policies[next(iter(self._policies))]
        self._policies[cached.domain] = cached

    def _mark_checked(self, domain: str) -> None:
        if len(self._checked) >= self.max_entries:
            self._checked.clear()
            self._loaded.clear()
        self._checked[domain] = self.monotonic()


def _using(cached: CachedPolicy | None) -> str:
    if cached is None:
        return "no policy applies"
    return f"the cached policy (id {cached.id}, mode {cached.mode}) applies until {cached.expires_at.isoformat()}"
