"""DNS lookups for mail: the Resolver protocol, its dnspython implementation, an in-memory fake, and MX resolution."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from agentpost.proto.memo import SharedCalls


class DnsError(Exception):
    """A lookup that did not complete: SERVFAIL, timeout, refusal. NXDOMAIN is an empty answer, not an error."""

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class NullMx(Exception):
    """RFC 7505: the domain publishes a null MX and accepts no mail (permanent)."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} publishes a null MX (RFC 7505): it accepts no mail")
        self.domain = domain


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[tuple[int, str]]: ...

    async def a(self, host: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]: ...

    async def ptr(self, ip: str) -> list[str]: ...


@runtime_checkable
class FamilyResolver(Resolver, Protocol):
    """A Resolver that also looks up one address family at a time.

    SPF (RFC 7208 §5) fetches only A records for an IPv4 client and only AAAA records for an IPv6
    one: a failure or an empty answer of the other family must not change the verdict.
    """

    async def ipv4(self, host: str) -> list[str]: ...

    async def ipv6(self, host: str) -> list[str]: ...


def to_ascii(name: str) -> str:
    """The A-label (IDNA) form of ``name``, lower case, without the final dot; "." stays "."."""
    name = name.strip()
    if name in (".", ""):
        return name
    if name.isascii():
        return name.rstrip(".").lower()
    try:
        return dns.name.from_unicode(name).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsError(f"not a valid domain name: {name!r}: {exc}", temporary=False) from exc


def _host_text(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def _parse_server(server: str) -> tuple[str, int]:
    """ "127.0.0.1:5353", "[::1]:53", "127.0.0.1" or "::1" -> (address, port)."""
    server = server.strip()
    if server.startswith("["):
        address, _, rest = server[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
        return address, port
    try:
        ipaddress.ip_address(server)
    except ValueError:
        address, _, port_text = server.rpartition(":")
        return address, int(port_text)
    return server, 53


class DnspythonResolver:
    """Resolver on dnspython's async stub resolver; explicit name servers, or the system's when none are given."""

    def __init__(self, servers: Sequence[str] = (), *, timeout: float = 2.0, lifetime: float = 5.0) -> None:
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*_parse_server(s)) for s in servers]
        else:
            resolver = dns.asyncresolver.Resolver(configure=True)
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        self._resolver = resolver

    async def _query(self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        # dnspython retries over TCP by itself when a UDP answer comes back truncated (TC=1).
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.NoNameservers as exc:
            raise DnsError(f"{name} {rdtype.name}: no server answered (SERVFAIL or refused)") from exc
        except dns.exception.Timeout as exc:
            raise DnsError(f"{name} {rdtype.name}: timed out") from exc
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name} {rdtype.name}: {exc}") from exc
        if answer.rrset is None:
            return []
        return list(answer.rrset)

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        records = await self._query(to_ascii(domain), dns.rdatatype.MX)
        return sorted((int(r.preference), _host_text(r.exchange)) for r in records)

    async def a(self, host: str) -> list[str]:
        name = to_ascii(host)
        v4, v6 = await asyncio.gather(self._query(name, dns.rdatatype.A), self._query(name, dns.rdatatype.AAAA))
        return [str(r.address) for r in v4] + [str(r.address) for r in v6]

    async def ipv4(self, host: str) -> list[str]:
        return [str(r.address) for r in await self._query(to_ascii(host), dns.rdatatype.A)]

    async def ipv6(self, host: str) -> list[str]:
        return [str(r.address) for r in await self._query(to_ascii(host), dns.rdatatype.AAAA)]

    async def txt(self, name: str) -> list[str]:
        records = await self._query(to_ascii(name), dns.rdatatype.TXT)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]

    async def ptr(self, ip: str) -> list[str]:
        try:
            name = dns.reversename.from_address(ip)
        except (dns.exception.SyntaxError, ValueError) as exc:
            raise DnsError(f"not an IP address: {ip!r}", temporary=False) from exc
        return [_host_text(r.target) for r in await self._query(name, dns.rdatatype.PTR)]


ZoneData = Mapping[str, Mapping[str, Sequence[Any]]]


class FakeResolver:
    """Resolver on a zone held in a dict, for tests.

    ``{"example.test": {"MX": [(10, "mx.example.test")]}, "mx.example.test": {"A": ["127.0.0.5"]}}``;
    PTR records are keyed by the IP address itself. Names in ``servfail`` raise a temporary DnsError
    for every record type; ``(name, type)`` pairs in ``servfail_types`` only for that type.
    """

    def __init__(
        self,
        zone: ZoneData | None = None,
        servfail: Iterable[str] = (),
        *,
        servfail_types: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.zone: dict[str, dict[str, list[Any]]] = {}
        for name, records in (zone or {}).items():
            self.zone[to_ascii(name)] = {rtype.upper(): list(values) for rtype, values in records.items()}
        self.servfail = {to_ascii(name) for name in servfail}
        self.servfail_types = {(to_ascii(name), rtype.upper()) for name, rtype in servfail_types}
        self.queries: list[tuple[str, str]] = []

    def _records(self, name: str, rtype: str) -> list[Any]:
        key = to_ascii(name)
        self.queries.append((key, rtype))
        if key in self.servfail or (key, rtype) in self.servfail_types:
            raise DnsError(f"{key} {rtype}: SERVFAIL")
        return list(self.zone.get(key, {}).get(rtype, []))

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        return sorted((int(pref), to_ascii(host) if host != "." else ".") for pref, host in self._records(domain, "MX"))

    async def a(self, host: str) -> list[str]:
        return [str(ip) for ip in self._records(host, "A")] + [str(ip) for ip in self._records(host, "AAAA")]

    async def ipv4(self, host: str) -> list[str]:
        return [str(ip) for ip in self._records(host, "A")]

    async def ipv6(self, host: str) -> list[str]:
        return [str(ip) for ip in self._records(host, "AAAA")]

    async def txt(self, name: str) -> list[str]:
        return [
            "".join(value) if isinstance(value, list | tuple) else str(value) for value in self._records(name, "TXT")
        ]

    async def ptr(self, ip: str) -> list[str]:
        return [to_ascii(host) for host in self._records(ip, "PTR")]


@dataclass(frozen=True, slots=True)
class MxTarget:
    host: str
    preference: int
    addresses: list[str]
    implicit: bool  # RFC 5321 §5.1: no MX RRset, the domain itself is the mail host


async def resolve_mx(resolver: Resolver, domain: str) -> list[MxTarget]:
    """The hosts to try for ``domain`` in RFC 5321 §5.1 order; [] when nothing resolves.

    Raises NullMx for an RFC 7505 null MX and DnsError(temporary=True) when the MX lookup fails.
    """
    domain = to_ascii(domain)
    records = await resolver.mx(domain)
    if not records:
        addresses = await resolver.a(domain)
        return [MxTarget(domain, 0, addresses, implicit=True)] if addresses else []
    # RFC 7505 §3: a single MX of "." means the domain accepts no mail; fail now, do not retry.
    if len(records) == 1 and records[0][1] in (".", ""):
        raise NullMx(domain)
    # RFC 5321 §5.1: lower preference first; hosts of equal preference in random order to spread load.
    ordered = sorted(records, key=lambda record: (record[0], random.random()))
    hosts = [(pref, host) for pref, host in ordered if host not in (".", "")]
    lookups = await asyncio.gather(*(resolver.a(host) for _, host in hosts), return_exceptions=True)
    targets: list[MxTarget] = []
    failures: list[DnsError] = []
    for (pref, host), found in zip(hosts, lookups, strict=True):
        if isinstance(found, DnsError):
            failures.append(found)
        elif isinstance(found, BaseException):
            raise found
        elif found:
            targets.append(MxTarget(host, pref, found, implicit=False))
    if not targets and failures:
        # Some MX hosts could not be looked up at all: an answer may come later, so this is not final.
        raise DnsError(f"{domain}: no MX host resolved: {failures[0]}", temporary=True)
    return targets


_Answer = TypeVar("_Answer", bound=list[Any])


class CachingResolver:
    """A Resolver that remembers answers for a short time, in memory, for one process.

    Sender authentication asks the same questions over and over (a busy sender's SPF record and its
    includes, its DKIM key, its DMARC record): answers are kept ``ttl`` seconds, empty answers
    (NXDOMAIN, NODATA) ``negative_ttl`` seconds, at most ``max_entries`` names, oldest dropped first.
    A DnsError is never kept: the next question asks again. Concurrent identical questions share one
    lookup. Record TTLs are not used (the Resolver protocol does not carry them), so ``ttl`` stays short.
    """

    def __init__(
        self,
        inner: Resolver,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 15.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._answers: dict[tuple[str, str], tuple[float, list[Any]]] = {}
        self._pending: SharedCalls[tuple[str, str], list[Any]] = SharedCalls()  # one lookup per question
        self._family = isinstance(inner, FamilyResolver)

    async def _lookup(self, kind: str, name: str, fetch: Callable[[], Awaitable[_Answer]]) -> _Answer:
        key = (kind, name.lower())
        found = self._answers.get(key)
        if found is not None:
            if self._fresh(found):
                return cast(_Answer, list(found[1]))
            del self._answers[key]
        return cast(_Answer, list(await self._pending.call(key, lambda: self._fetch(key, fetch))))

    async def _fetch(self, key: tuple[str, str], fetch: Callable[[], Awaitable[_Answer]]) -> list[Any]:
        answer = list(await fetch())  # errors are not remembered
        self._keep(key, answer)
        return answer

    def _keep(self, key: tuple[str, str], answer: list[Any]) -> None:
        if len(self._answers) >= self.max_entries:
            now = self.clock()
            for stale in [k for k, (expires, _) in self._answers.items() if expires <= now]:
                del self._answers[stale]
            while len(self._answers) >= self.max_entries:
                del self._answers[next(iter(self._answers))]
        self._answers[key] = (self.clock() + (self.ttl if answer else self.negative_ttl), list(answer))

    def _fresh(self, entry: tuple[float, list[Any]]) -> bool:
        return entry[0] > self.clock()

    def holds(self, kind: str, name: str) -> bool:
        """Whether a fresh answer to this question is kept, so asking it now would not wait."""
        found = self._answers.get((kind, name.lower()))
        return found is not None and self._fresh(found)

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        return await self._lookup("MX", domain, lambda: self.inner.mx(domain))

    async def a(self, host: str) -> list[str]:
        return await self._lookup("A+AAAA", host, lambda: self.inner.a(host))

    async def ipv4(self, host: str) -> list[str]:
        if self._family:
            inner = cast(FamilyResolver, self.inner)
            return await self._lookup("A", host, lambda: inner.ipv4(host))
        return [ip for ip in await self.a(host) if ":" not in ip]

    async def ipv6(self, host: str) -> list[str]:
        if self._family:
            inner = cast(FamilyResolver, self.inner)
            return await self._lookup("AAAA", host, lambda: inner.ipv6(host))
        return [ip for ip in await self.a(host) if ":" in ip]

    async def txt(self, name: str) -> list[str]:
        return await self._lookup("TXT", name, lambda: self.inner.txt(name))

    async def ptr(self, ip: str) -> list[str]:
        return await self._lookup("PTR", ip, lambda: self.inner.ptr(ip))


def answered(resolver: Resolver, names: Iterable[str], kind: str = "TXT") -> bool:
    """Whether ``resolver`` would answer every one of these questions from its cache.

    Mail authentication runs its checks concurrently (asyncio.gather) so that their DNS waits
    overlap; when nothing would wait, the checks run one after the other instead, which spares a
    task per check (~10 us each, several per message on the MX's hot path).
    """
    return isinstance(resolver, CachingResolver) and all(resolver.holds(kind, name) for name in names)
