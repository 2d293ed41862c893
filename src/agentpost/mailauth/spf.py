"""SPF (RFC 7208): check_host() for the MAIL FROM and HELO identities, on the injected DNS resolver.

``check_mail_from`` and ``check_helo`` pick the identity (RFC 7208 §2.3, §2.4) and call
``check_host`` (§4), which fetches the domain's record, evaluates its mechanisms and modifiers
(§5, §6) with macros (§7) under the processing limits of §4.6.4, and returns an ``SpfResult``.

Every DNS question goes through the ``Resolver`` protocol of ``agentpost.net.dns``. A lookup that
fails (SERVFAIL, timeout) ends the check with ``temperror``, never with a guessed verdict; an
empty answer (NXDOMAIN or NODATA) is an answer. A resolver that also implements
``FamilyResolver`` is asked for A or AAAA records alone, as §5 requires; any other resolver's
``a()`` answer is filtered by family.

Records are parsed once per distinct text (an LRU cache) into tuples of mechanisms whose macro
strings are already tokenised, so evaluating a popular ``include`` costs no parsing and no regex
compilation.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast
from urllib.parse import quote

from agentpost.net.dns import DnsError, FamilyResolver, Resolver, to_ascii

__all__ = [
    "DEFAULT_EXPLANATION",
    "Record",
    "Result",
    "SpfResult",
    "SpfSyntaxError",
    "check_helo",
    "check_host",
    "check_mail_from",
    "parse_record",
]

Result: TypeAlias = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]

# RFC 7208 §4.6.4: at most 10 mechanisms and modifiers that query DNS, at most 2 void lookups,
# at most 10 MX records per "mx" and 10 PTR names per "ptr" (or %{p}).
MAX_DNS_TERMS: Final = 10
MAX_VOID_LOOKUPS: Final = 2
MAX_MX_RECORDS: Final = 10
MAX_PTR_NAMES: Final = 10
# RFC 7208 §4.6.4: limit the elapsed time of one check_host() to at least 20 seconds.
DEFAULT_TIME_LIMIT: Final = 20.0
# An explanation ends up in an SMTP reply line (RFC 5321 §4.5.3.1.5: 512 octets with the code).
MAX_EXPLANATION: Final = 400
_MAX_EXPANSION: Final = 8192  # characters of one expanded domain-spec
DEFAULT_EXPLANATION: Final = "the sending host is not authorised by the domain's SPF record"

_QUALIFIERS: Final[dict[str, Result]] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS: Final = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
# RFC 7208 §4.6.4: the terms that cause DNS queries and count towards the limit of 10.
_DNS_MECHANISMS: Final = frozenset({"include", "a", "mx", "ptr", "exists"})
# RFC 7208 §7.3: c, r and t are allowed only in explanation text.
_DOMAIN_LETTERS: Final = frozenset("slodipvh")
_EXP_LETTERS: Final = _DOMAIN_LETTERS | frozenset("crt")

# RFC 7208 §7.1: macro-expand = "%{" macro-letter transformers *delimiter "}" (after the "%").
_MACRO_EXPAND: Final = re.compile(r"\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
# RFC 7208 §4.6.1: name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ), followed at once by "=".
_MODIFIER: Final = re.compile(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)\Z", re.DOTALL)
# RFC 7208 §5.3/§5.4: dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ], at the end.
_DUAL_CIDR: Final = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")
# RFC 7208 §7.1: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL: Final = re.compile(r"[0-9A-Za-z]*[A-Za-z][0-9A-Za-z]*|[0-9A-Za-z]+-[0-9A-Za-z\-]*[0-9A-Za-z]")
_CIDR_DIGITS: Final = re.compile(r"0|[1-9][0-9]{0,2}")
# RFC 7208 §3 / §4.6.1: a record is 7-bit text and terms are separated by spaces only.
_NOT_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


class SpfSyntaxError(ValueError):
    """A record or macro string that breaks the RFC 7208 grammar (the check's result is permerror)."""


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check (RFC 7208 §2.6).

    ``domain`` is the <domain> checked (the MAIL FROM domain or the HELO name); ``mechanism`` the
    term that decided ("-all", "include:_spf.example.com", ...), None when no term matched;
    ``explanation`` is set for ``fail`` only (§6.2); ``reason`` says why, for logs and
    Authentication-Results comments; ``lookups`` counts the DNS-querying terms evaluated (§4.6.4).
    """

    result: Result
    domain: str
    explanation: str | None = None
    mechanism: str | None = None
    reason: str = ""
    lookups: int = 0


# ---------------------------------------------------------------------------------------------
# Parsing: records and macro strings


@dataclass(frozen=True, slots=True)
class _Macro:
    """One %{...} of RFC 7208 §7.1: letter, right-hand parts kept (0 = all), reversal, delimiters."""

    letter: str
    digits: int
    reverse: bool
    delimiters: str
    escape: bool  # an upper-case letter: URL-escape the value (§7.3)
    splitter: re.Pattern[str] | None  # for more than one delimiter


_Part: TypeAlias = str | _Macro
MacroString: TypeAlias = tuple[_Part, ...]


@dataclass(frozen=True, slots=True)
class _Mechanism:
    text: str  # the term as published, for SpfResult.mechanism
    qualifier: Result
    kind: str
    domain: MacroString | None = None  # None: the current <domain>
    cidr4: int = 32
    cidr6: int = 128
    network: int = 0  # ip4 / ip6: the address as an integer


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record: its mechanisms in order, and the redirect= and exp= modifiers."""

    mechanisms: tuple[_Mechanism, ...]
    redirect: MacroString | None = None
    exp: MacroString | None = None


def _macro_string(text: str, letters: frozenset[str]) -> tuple[MacroString, bool]:
    """Tokens of an RFC 7208 §7.1 macro-string, and whether it ends with a macro-expand.

    Literal runs are merged; "%%", "%_" and "%-" become "%", " " and "%20" (§7.3).
    """
    parts: list[_Part] = []
    literal: list[str] = []
    ends_with_macro = False
    pos = 0
    while True:
        percent = text.find("%", pos)
        if percent < 0:
            if pos < len(text):
                literal.append(text[pos:])
                ends_with_macro = False
            break
        if percent > pos:
            literal.append(text[pos:percent])
        follower = text[percent + 1 : percent + 2]
        if follower == "%":
            literal.append("%")
            pos = percent + 2
        elif follower == "_":
            literal.append(" ")
            pos = percent + 2
        elif follower == "-":
            literal.append("%20")
            pos = percent + 2
        elif follower == "{":
            match = _MACRO_EXPAND.match(text, percent + 1)
            if match is None:
                raise SpfSyntaxError(f"malformed macro in {text!r}")
            letter, digits, reverse, delimiters = match.groups()
            if letter.lower() not in letters:
                raise SpfSyntaxError(f"macro letter {letter!r} not allowed here (RFC 7208 §7.1): {text!r}")
            count = 0
            if digits:
                if not digits.strip("0"):
                    raise SpfSyntaxError(f"macro keeps zero parts (RFC 7208 §7.3): {text!r}")
                count = int(digits) if len(digits) <= 3 else 999  # more parts than exist: all of them
            if literal:
                parts.append("".join(literal))
                literal = []
            unique = "".join(dict.fromkeys(delimiters))
            splitter = re.compile("[" + re.escape(unique) + "]") if len(unique) > 1 else None
            parts.append(_Macro(letter.lower(), count, bool(reverse), unique, letter.isupper(), splitter))
            pos = match.end()
        else:
            # RFC 7208 §7.1: a "%" not followed by "{", "%", "-" or "_" is a syntax error.
            raise SpfSyntaxError(f"'%' not followed by '{{', '%', '-' or '_' in {text!r}")
        ends_with_macro = True
    if literal:
        parts.append("".join(literal))
    return tuple(parts), ends_with_macro


def _domain_spec(text: str) -> MacroString:
    """RFC 7208 §7.1: domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand."""
    if not text:
        raise SpfSyntaxError("empty domain-spec")
    parts, ends_with_macro = _macro_string(text, _DOMAIN_LETTERS)
    if not ends_with_macro:
        body = text[:-1] if text.endswith(".") else text
        _, dot, top = body.rpartition(".")
        if not dot or _TOPLABEL.fullmatch(top) is None:
            raise SpfSyntaxError(f"domain-spec does not end in a valid top label (RFC 7208 §7.1): {text!r}")
    return parts


def _cidr(digits: str | None, maximum: int, term: str) -> int:
    if digits is None:
        return maximum
    # RFC 7208 §5.6: no leading zeros (as in ip4-network), at most 32 / 128.
    if _CIDR_DIGITS.fullmatch(digits) is None or int(digits) > maximum:
        raise SpfSyntaxError(f"invalid CIDR length in {term!r}")
    return int(digits)


def _mechanism(term: str) -> _Mechanism:
    qualifier: Result = "pass"
    body = term
    if term[0] in _QUALIFIERS:
        qualifier = _QUALIFIERS[term[0]]
        body = term[1:]
    cut = len(body)
    for separator in (":", "/"):
        found = body.find(separator)
        if 0 <= found < cut:
            cut = found
    kind = body[:cut].lower()
    rest = body[cut:]
    if kind not in _MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    if kind == "all":  # RFC 7208 §5.1
        if rest:
            raise SpfSyntaxError(f"'all' takes no argument: {term!r}")
        return _Mechanism(term, qualifier, kind)
    if kind in ("include", "exists"):  # RFC 7208 §5.2, §5.7
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{kind} needs ':' domain-spec: {term!r}")
        return _Mechanism(term, qualifier, kind, _domain_spec(rest[1:]))
    if kind == "ptr":  # RFC 7208 §5.5
        if not rest:
            return _Mechanism(term, qualifier, kind)
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"malformed ptr: {term!r}")
        return _Mechanism(term, qualifier, kind, _domain_spec(rest[1:]))
    if kind in ("a", "mx"):  # RFC 7208 §5.3, §5.4
        cidrs = _DUAL_CIDR.search(rest)
        assert cidrs is not None  # the pattern matches the empty string at the end
        head = rest[: cidrs.start()]
        cidr4 = _cidr(cidrs.group(1), 32, term)
        cidr6 = _cidr(cidrs.group(2), 128, term)
        if not head:
            return _Mechanism(term, qualifier, kind, None, cidr4, cidr6)
        if not head.startswith(":"):
            raise SpfSyntaxError(f"malformed {kind}: {term!r}")
        return _Mechanism(term, qualifier, kind, _domain_spec(head[1:]), cidr4, cidr6)
    # ip4 / ip6, RFC 7208 §5.6
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"{kind} needs an address: {term!r}")
    address, slash, digits = rest[1:].partition("/")
    try:
        if kind == "ip4":
            network = int(ipaddress.IPv4Address(address))
        elif "%" in address:  # a scope id is no part of ip6-network
            raise ValueError(address)
        else:
            network = int(ipaddress.IPv6Address(address))
    except ValueError:
        raise SpfSyntaxError(f"invalid address in {term!r}") from None
    if kind == "ip4":
        return _Mechanism(term, qualifier, kind, cidr4=_cidr(digits if slash else None, 32, term), network=network)
    return _Mechanism(term, qualifier, kind, cidr6=_cidr(digits if slash else None, 128, term), network=network)


def _is_spf(text: str) -> bool:
    # RFC 7208 §4.5: "v=spf1" exactly (case-insensitively, §4.6.1), then a space or the end.
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse_record(text: str) -> Record:
    """Parse an SPF record ("v=spf1 ..."); raises SpfSyntaxError anywhere it breaks the grammar (§4.6)."""
    if not _is_spf(text):
        raise SpfSyntaxError("not an SPF record: it does not start with 'v=spf1'")
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        raise SpfSyntaxError(f"character {bad.group()!r} in record (RFC 7208 §3: 7-bit text, terms split by SP)")
    mechanisms: list[_Mechanism] = []
    redirect: MacroString | None = None
    exp: MacroString | None = None
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.match(term)
        if modifier is None:
            mechanisms.append(_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        # RFC 7208 §6: redirect and exp may each appear once; unknown modifiers are ignored
        # but must still be valid macro-strings (§A, unknown-modifier).
        if name == "redirect":
            if redirect is not None:
                raise SpfSyntaxError("redirect= appears twice (RFC 7208 §6)")
            redirect = _domain_spec(value)
        elif name == "exp":
            if exp is not None:
                raise SpfSyntaxError("exp= appears twice (RFC 7208 §6)")
            exp = _domain_spec(value)
        else:
            _macro_string(value, _EXP_LETTERS)
    return Record(tuple(mechanisms), redirect, exp)


@functools.lru_cache(maxsize=2048)
def _parse_cached(text: str) -> Record | str:
    try:
        return parse_record(text)
    except SpfSyntaxError as exc:
        return str(exc)


# ---------------------------------------------------------------------------------------------
# Names


def _dns_name(name: str) -> str | None:
    """The name to query for an expanded domain-spec, or None if no DNS query can be made of it.

    RFC 7208 §7.3: a name over 253 characters loses labels on the left until it fits. A name
    with an empty or over-long label cannot exist (§4.3, §4.8): its mechanism does not match.
    """
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = to_ascii(name)
        except DnsError:
            return None
    if len(name) > 253:
        dot = name.find(".", len(name) - 254)
        if dot < 0:
            return None
        name = name[dot + 1 :]
    if not name or any(not label or len(label) > 63 for label in name.split(".")):
        return None
    return name


def _initial_domain(domain: str) -> str | None:
    """RFC 7208 §4.3: <domain> must be a well-formed multi-label domain name, else the result is none."""
    name = domain.strip().removesuffix(".")
    if not name or name.startswith("["):  # an address literal is no domain
        return None
    if not name.isascii():
        try:
            name = to_ascii(name)
        except DnsError:
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or labels[-1].isdigit():
        return None
    if any(not label or len(label) > 63 for label in labels):
        return None
    return name.lower()


# ---------------------------------------------------------------------------------------------
# Evaluation


class _Abort(Exception):
    """Ends the whole check with temperror or permerror (RFC 7208 §4.6.4, §5.2, §6.1, ...)."""

    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result: Result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Result
    domain: str
    mechanism: str | None
    reason: str
    exp: MacroString | None = None  # the exp= of the record whose own mechanism said fail


def _parse_address(text: str) -> tuple[int, int] | None:
    """(bits, value) of an IPv4 or IPv6 address in text form; None if it is neither."""
    try:
        return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        return 128, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        return None


_FAMILY_RESOLVERS: dict[type, bool] = {}


def _family_resolver(resolver: Resolver) -> FamilyResolver | None:
    """The resolver if it offers per-family lookups (decided once per class: a protocol isinstance is slow)."""
    kind = type(resolver)
    offers = _FAMILY_RESOLVERS.get(kind)
    if offers is None:
        offers = _FAMILY_RESOLVERS[kind] = isinstance(resolver, FamilyResolver)
    return cast(FamilyResolver, resolver) if offers else None


def _in_network(address: int, network: int, prefix: int, bits: int) -> bool:
    shift = bits - prefix
    return (address >> shift) == (network >> shift)


class _Check:
    """The state of one check_host() call: the client, the identity and the §4.6.4 counters."""

    def __init__(self, resolver: Resolver, ip: str, sender: str, helo: str, receiver: str, now: float | None) -> None:
        parsed = _parse_address(ip.strip().partition("%")[0])  # no IPv6 zone ("fe80::1%eth0")
        if parsed is None:
            raise ValueError(f"not an IP address: {ip!r}")
        bits, value = parsed
        # RFC 7208 §5: an IPv4-mapped IPv6 address is evaluated as the IPv4 address it maps.
        if bits == 128 and value >> 32 == 0xFFFF:
            bits, value = 32, value & 0xFFFFFFFF
        self.resolver = resolver
        self.family = _family_resolver(resolver)
        self.v4 = bits == 32
        self.bits = bits
        self.ip = value
        if self.v4:
            self.ip_text = socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
        else:
            self.ip_text = str(ipaddress.IPv6Address(value))  # RFC 5952 text, for %{c} and PTR
        local, _, sender_domain = sender.rpartition("@")
        self.local = local or "postmaster"  # RFC 7208 §4.3
        self.sender_domain = sender_domain
        self.sender = f"{self.local}@{sender_domain}"
        self.helo = helo
        self.receiver = receiver
        self.now = now
        self.lookups = 0
        self.voids = 0
        self._ptr_names: list[str] | None = None
        self._ptr_failed = False
        self._validated: dict[str, bool] = {}
        self._p: dict[str, str] = {}

    # -- limits (RFC 7208 §4.6.4)

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_TERMS:
            raise _Abort("permerror", f"more than {MAX_DNS_TERMS} DNS-querying terms at {term!r} (RFC 7208 §4.6.4)")

    def _void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _Abort("permerror", f"more than {MAX_VOID_LOOKUPS} void lookups at {name} (RFC 7208 §4.6.4)")

    # -- DNS

    async def _ask(self, lookup: Awaitable[list[str]]) -> list[str]:
        """An answer, [] for a name that cannot exist; temperror when the lookup fails (§4.4, §5)."""
        try:
            return await lookup
        except DnsError as exc:
            if exc.temporary:
                raise _Abort("temperror", f"DNS lookup failed: {exc}") from None
            return []

    def _fetch(self, host: str, v4: bool) -> Awaitable[list[str]]:
        # RFC 7208 §5: A records for an IPv4 client, AAAA for an IPv6 one, never both.
        if self.family is not None:
            return self.family.ipv4(host) if v4 else self.family.ipv6(host)
        return self._filtered(host, v4)

    async def _filtered(self, host: str, v4: bool) -> list[str]:
        return [address for address in await self.resolver.a(host) if (":" not in address) == v4]

    def _addresses(self, answer: list[str]) -> list[int]:
        out: list[int] = []
        for text in answer:
            parsed = _parse_address(text)
            if parsed is not None and parsed[0] == self.bits:
                out.append(parsed[1])
        return out

    def _any_in(self, answer: list[str], mechanism: _Mechanism) -> bool:
        prefix = mechanism.cidr4 if self.v4 else mechanism.cidr6
        return any(_in_network(self.ip, address, prefix, self.bits) for address in self._addresses(answer))

    async def _ptr(self) -> list[str]:
        """The client's PTR names (first 10, RFC 7208 §4.6.4); a failed lookup gives none (§5.5)."""
        if self._ptr_names is None:
            try:
                names = await self.resolver.ptr(self.ip_text)
            except DnsError:
                names = []
                self._ptr_failed = True
            self._ptr_names = [name.rstrip(".").lower() for name in names[:MAX_PTR_NAMES]]
        return self._ptr_names

    async def _validate(self, names: list[str]) -> list[str]:
        """RFC 7208 §5.5: the names among ``names`` with an address record equal to the client's IP.

        A name whose address lookup fails is skipped and the search continues.
        """
        todo = [name for name in dict.fromkeys(names) if name not in self._validated]
        queryable = [(name, _dns_name(name)) for name in todo]
        lookups = [self._fetch(query, self.v4) for _, query in queryable if query is not None]
        answers = await asyncio.gather(*lookups, return_exceptions=True) if lookups else []
        found = iter(answers)
        for name, query in queryable:
            answer = next(found) if query is not None else []
            if isinstance(answer, BaseException):
                if not isinstance(answer, DnsError):
                    raise answer
                answer = []
            self._validated[name] = self.ip in self._addresses(answer)
        return [name for name in names if self._validated[name]]

    # -- macros (RFC 7208 §7)

    async def _letter(self, letter: str, domain: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.v4:
                return self.ip_text
            # RFC 7208 §7.3: dot-separated nibbles. Upper-case hex, as the RFC 7208 test suite
            # expects in explanations; DNS names compare case-insensitively.
            return ".".join(f"{self.ip:032X}")
        if letter == "v":
            return "in-addr" if self.v4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "p":
            return await self._validated_name(domain)
        if letter == "c":
            return self.ip_text
        if letter == "r":
            return self.receiver
        return str(int(self.now if self.now is not None else time.time()))  # "t"

    async def _validated_name(self, domain: str) -> str:
        """RFC 7208 §7.3 %{p}: <domain> if validated, else a validated subdomain, else any, else "unknown"."""
        if domain not in self._p:
            validated = await self._validate(await self._ptr())
            suffix = "." + domain
            chosen = next((name for name in validated if name == domain), None)
            chosen = chosen or next((name for name in validated if name.endswith(suffix)), None)
            self._p[domain] = chosen or (validated[0] if validated else "unknown")
        return self._p[domain]

    async def expand(self, macro_string: MacroString, domain: str, limit: int = _MAX_EXPANSION) -> str:
        """RFC 7208 §7.3: the macro string with every macro replaced; stops growing past ``limit``."""
        out: list[str] = []
        size = 0
        for part in macro_string:
            if isinstance(part, str):
                value = part
            else:
                value = await self._letter(part.letter, domain)
                if part.digits or part.reverse or part.delimiters:
                    # §7.3: split on the delimiters (default "."), reverse, keep the right-hand
                    # parts, and join with ".".
                    if part.splitter is not None:
                        pieces = part.splitter.split(value)
                    else:
                        pieces = value.split(part.delimiters or ".")
                    if part.reverse:
                        pieces.reverse()
                    if part.digits and part.digits < len(pieces):
                        pieces = pieces[-part.digits :]
                    value = ".".join(pieces)
                if part.escape:
                    value = quote(value, safe="")  # §7.3: upper-case macros are URL-escaped
            out.append(value)
            size += len(value)
            if size > limit:
                break
        return "".join(out)

    async def _target(self, spec: MacroString | None, domain: str) -> str | None:
        if spec is None:
            return domain
        if len(spec) == 1 and isinstance(spec[0], str):
            return _dns_name(spec[0])
        expanded = await self.expand(spec, domain, _MAX_EXPANSION)
        # Only the right-most 253 characters survive (§7.3), but an expansion this long is
        # absurd: treat it as a name no query can be made of rather than build it.
        return _dns_name(expanded) if len(expanded) <= _MAX_EXPANSION else None

    # -- check_host() proper (RFC 7208 §4)

    async def check(self, domain: str) -> _Outcome:
        # RFC 7208 §4.4: TXT records only (the SPF RR type is not used, §3.1); a failed lookup
        # is temperror.
        texts = await self._ask(self.resolver.txt(domain))
        records = [text for text in texts if _is_spf(text)]
        if not records:
            return _Outcome("none", domain, None, f"{domain} publishes no SPF record")
        if len(records) > 1:  # RFC 7208 §4.5
            raise _Abort("permerror", f"{domain} publishes {len(records)} SPF records (RFC 7208 §4.5)")
        record = _parse_cached(records[0])
        if isinstance(record, str):  # RFC 7208 §4.6: a syntax error anywhere is permerror
            raise _Abort("permerror", f"{domain}: {record}")
        for mechanism in record.mechanisms:
            if mechanism.kind in _DNS_MECHANISMS:
                self._count(mechanism.text)
            if await self._matches(mechanism, domain):
                reason = f"{domain} matched {mechanism.text!r}"
                exp = record.exp if mechanism.qualifier == "fail" else None
                return _Outcome(mechanism.qualifier, domain, mechanism.text, reason, exp)
        if record.redirect is not None:
            # RFC 7208 §6.1: redirect applies only when no mechanism matched; it counts as a DNS
            # term; a target without a record (or a malformed one) is permerror; the target's
            # own exp= (not this record's) explains a fail.
            self._count("redirect=")
            target = await self._target(record.redirect, domain)
            if target is None:
                raise _Abort("permerror", f"{domain}: redirect= to a malformed domain")
            outcome = await self.check(target)
            if outcome.result == "none":
                raise _Abort("permerror", f"{domain}: redirect={target} has no SPF record (RFC 7208 §6.1)")
            return outcome
        # RFC 7208 §4.7: no match and no redirect: neutral.
        return _Outcome("neutral", domain, None, f"no term of {domain}'s record matched")

    async def _matches(self, mechanism: _Mechanism, domain: str) -> bool:
        kind = mechanism.kind
        if kind == "all":
            return True
        if kind == "ip4":
            return self.v4 and _in_network(self.ip, mechanism.network, mechanism.cidr4, 32)
        if kind == "ip6":
            return not self.v4 and _in_network(self.ip, mechanism.network, mechanism.cidr6, 128)
        target = await self._target(mechanism.domain, domain)
        if kind == "include":
            # RFC 7208 §5.2: pass matches; fail, softfail and neutral do not; temperror and
            # permerror propagate (as _Abort); none is permerror.
            if target is None:
                raise _Abort("permerror", f"{domain}: {mechanism.text!r} names a malformed domain")
            inner = await self.check(target)
            if inner.result == "none":
                raise _Abort("permerror", f"{domain}: {mechanism.text!r}: {target} has no SPF record (RFC 7208 §5.2)")
            return inner.result == "pass"
        if target is None:
            return False
        if kind == "a":  # RFC 7208 §5.3
            answer = await self._ask(self._fetch(target, self.v4))
            if not answer:
                self._void(target)
            return self._any_in(answer, mechanism)
        if kind == "mx":
            return await self._mx(mechanism, target)
        if kind == "ptr":  # RFC 7208 §5.5
            names = await self._ptr()
            if not names:
                if not self._ptr_failed:  # a failed lookup is no void lookup, just no match
                    self._void(f"PTR of {self.ip_text}")
                return False
            suffix = "." + target.lower()
            candidates = [name for name in names if name == target.lower() or name.endswith(suffix)]
            return bool(candidates) and bool(await self._validate(candidates))
        # exists, RFC 7208 §5.7: an A query whatever the client's family.
        answer = await self._ask(self._fetch(target, True))
        if not answer:
            self._void(target)
            return False
        return True

    async def _mx(self, mechanism: _Mechanism, target: str) -> bool:
        """RFC 7208 §5.4: match the client against the addresses of the target's MX hosts."""
        try:
            records = await self.resolver.mx(target)
        except DnsError as exc:
            if exc.temporary:
                raise _Abort("temperror", f"DNS lookup failed: {exc}") from None
            records = []
        if len(records) > MAX_MX_RECORDS:  # §4.6.4: more than 10 MX records is permerror
            raise _Abort("permerror", f"{target} has more than {MAX_MX_RECORDS} MX records (RFC 7208 §4.6.4)")
        if not records:
            # §5.4: no MX records: no match; do not fall back to the target's own addresses.
            self._void(target)
            return False
        hosts = [_dns_name(host) for _, host in records if host not in (".", "")]
        queries = [host for host in hosts if host is not None]
        if not queries:
            return False
        # Ask for every host at once, then read the answers in MX order as a sequential
        # evaluation would: the first failed lookup before a match is temperror.
        answers = await asyncio.gather(*(self._fetch(host, self.v4) for host in queries), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                if isinstance(answer, DnsError):
                    if answer.temporary:
                        raise _Abort("temperror", f"DNS lookup failed: {answer}")
                    continue
                raise answer
            if self._any_in(answer, mechanism):
                return True
        return False

    async def explain(self, outcome: _Outcome) -> str | None:
        """RFC 7208 §6.2: the expanded exp= text, or None to use the default explanation.

        Any problem (no exp=, a malformed name, a failed lookup, not exactly one TXT record,
        non-ASCII or malformed text) means "as if no exp modifier was given".
        """
        if outcome.exp is None:
            return None
        name = await self._target(outcome.exp, outcome.domain)
        if name is None:
            return None
        try:
            texts = await self.resolver.txt(name)
        except DnsError:
            return None
        if len(texts) != 1 or _NOT_PRINTABLE.search(texts[0]) is not None:
            return None
        try:
            parts, _ = _macro_string(texts[0], _EXP_LETTERS)
        except SpfSyntaxError:
            return None
        text = await self.expand(parts, outcome.domain, MAX_EXPLANATION)
        return text[:MAX_EXPLANATION]


async def check_host(
    resolver: Resolver,
    ip: str,
    domain: str,
    sender: str,
    helo: str = "",
    *,
    receiver: str = "unknown",
    default_explanation: str = DEFAULT_EXPLANATION,
    time_limit: float = DEFAULT_TIME_LIMIT,
    now: float | None = None,
) -> SpfResult:
    """RFC 7208 §4: may ``ip`` send mail for ``domain``? ``sender`` is <sender> (local@domain).

    ``helo`` fills %{h}, ``receiver`` %{r} (explanations only), ``now`` %{t}. Raises ValueError
    only when ``ip`` is not an IP address. Never raises for DNS trouble: that is temperror.
    """
    check = _Check(resolver, ip, sender, helo, receiver, now)
    name = _initial_domain(domain)
    if name is None:
        return SpfResult("none", domain, reason=f"{domain!r} is not a valid domain name (RFC 7208 §4.3)")
    try:
        async with asyncio.timeout(time_limit):
            outcome = await check.check(name)
    except _Abort as abort:
        return SpfResult(abort.result, name, reason=abort.reason, lookups=check.lookups)
    except TimeoutError:
        reason = f"SPF evaluation took longer than {time_limit:g} s (RFC 7208 §4.6.4)"
        return SpfResult("temperror", name, reason=reason, lookups=check.lookups)
    explanation = None
    if outcome.result == "fail":
        try:
            async with asyncio.timeout(time_limit):
                explanation = await check.explain(outcome)
        except (_Abort, TimeoutError):
            explanation = None
        explanation = explanation or default_explanation
    return SpfResult(outcome.result, name, explanation, outcome.mechanism, outcome.reason, check.lookups)


async def check_mail_from(
    resolver: Resolver,
    ip: str,
    mail_from: str,
    helo: str,
    *,
    receiver: str = "unknown",
    default_explanation: str = DEFAULT_EXPLANATION,
    time_limit: float = DEFAULT_TIME_LIMIT,
    now: float | None = None,
) -> SpfResult:
    """RFC 7208 §2.4: check the MAIL FROM identity; a null reverse-path checks postmaster@<helo>.

    ``mail_from`` is the bare reverse-path ("" for <>); without an "@" it is taken as a domain.
    """
    mail_from = mail_from.strip()
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    if not mail_from:
        return await check_helo(
            resolver,
            ip,
            helo,
            receiver=receiver,
            default_explanation=default_explanation,
            time_limit=time_limit,
            now=now,
        )
    local, at, domain = mail_from.rpartition("@")
    if not at:
        domain = mail_from
    sender = f"{local or 'postmaster'}@{domain}"
    return await check_host(
        resolver,
        ip,
        domain,
        sender,
        helo,
        receiver=receiver,
        default_explanation=default_explanation,
        time_limit=time_limit,
        now=now,
    )


async def check_helo(
    resolver: Resolver,
    ip: str,
    helo: str,
    *,
    receiver: str = "unknown",
    default_explanation: str = DEFAULT_EXPLANATION,
    time_limit: float = DEFAULT_TIME_LIMIT,
    now: float | None = None,
) -> SpfResult:
    """RFC 7208 §2.3: check the HELO identity, <sender> being postmaster@<helo>.

    An address literal or a name that is not a multi-label domain gives none (§4.3).
    """
    helo = helo.strip()
    return await check_host(
        resolver,
        ip,
        helo,
        f"postmaster@{helo}",
        helo,
        receiver=receiver,
        default_explanation=default_explanation,
        time_limit=time_limit,
        now=now,
    )
