"""The DNS records a hosted domain should publish, and checking the published ones through the resolver.

``expected()`` lists what to publish for one domain (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, BIMI,
PTR); ``check()`` looks each one up and says VALID, INVALID, MISSING or UNKNOWN (the lookup failed:
never VALID on a guess) with a reason a person can act on; ``verdict()`` turns the findings into the
domain's status. No database, no config: the caller passes a ``DnsSetup`` and a resolver.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from agentpost.mailauth import dmarc, spf
from agentpost.net.dns import DnsError, Resolver, to_ascii

# REMOVE: a retired DKIM key's record that is still published.
Status = Literal["MISSING", "INVALID", "VALID", "UNKNOWN", "REMOVE"]
# dkim: a signing key; dkim_next: the key a rotation switches to once it is seen in DNS;
# dkim_old: a key that stopped signing, published for the grace period; dkim_retired: to remove.
Kind = Literal[
    "mx",
    "spf",
    "dkim",
    "dkim_next",
    "dkim_old",
    "dkim_retired",
    "dmarc",
    "mta_sts",
    "mta_sts_host",
    "tls_rpt",
    "bimi",
    "ptr",
]

# A domain is VERIFIED when these are right: mail reaches us and what we send authenticates.
REQUIRED: Final[frozenset[str]] = frozenset({"mx", "spf", "dkim", "dmarc"})
# RFC 8461 §3.2: max_age in seconds; a week is the usual value, at most 31557600.
MTA_STS_MAX_AGE: Final = 604800
# An address no real sender uses: evaluating SPF for it walks the whole record, so the count of
# DNS lookups (RFC 7208 §4.6.4, at most 10) and the final "all" are both seen.
_PROBE_IP: Final = "0.0.0.1"
_STS_ID: Final = re.compile(r"[A-Za-z0-9]{1,32}")


@dataclass(frozen=True, slots=True)
class DnsSetup:
    """What the generated records say: this server's name, its sending addresses and the options."""

    hostname: str
    source: str = ""  # [outbound] source
    source_by_domain: Mapping[str, str] = field(default_factory=dict)
    spf_all: str = "-all"
    mta_sts_mode: str = "testing"
    bimi_logo: str = ""

    def sending_ips(self, domain: str) -> list[str]:
        """The configured source address(es) mail from ``domain`` leaves from; [] when none is set."""
        ip = self.source_by_domain.get(domain) or self.source
        return [ip] if ip else []


@dataclass(frozen=True, slots=True)
class Expected:
    """One record to publish. ``ip`` is the sending address a PTR record is for; ``note`` says why
    a record is there for a while only (DKIM rotation)."""

    kind: Kind
    type: str
    name: str
    value: str
    priority: int | None = None
    ip: str = ""
    note: str = ""

    @property
    def required(self) -> bool:
        return self.kind in REQUIRED


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    reason: str


def dmarc_report_address(domain: str) -> str:
    # Reports to the domain itself (our MX receives its mail) need no RFC 9990 §3 external
    # destination record, which a rua outside the domain would.
    return f"dmarc-reports@{domain}"


def tls_report_address(domain: str) -> str:
    return f"tls-reports@{domain}"


def mta_sts_policy(domain: str, setup: DnsSetup) -> str:
    """The RFC 8461 §3.2 policy for ``domain``: our MX host, in the configured mode."""
    del domain  # every hosted domain has the same MX: this server
    return f"version: STSv1\r\nmode: {setup.mta_sts_mode}\r\nmx: {setup.hostname}\r\nmax_age: {MTA_STS_MAX_AGE}\r\n"


def mta_sts_id(policy: str) -> str:
    # RFC 8461 §3.1: id changes whenever the policy does; a digest of the policy does exactly that.
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def spf_value(domain: str, setup: DnsSetup) -> str:
    ips = setup.sending_ips(domain)
    terms = [f"ip6:{ip}" if ":" in ip else f"ip4:{ip}" for ip in ips] or [f"a:{setup.hostname}"]
    return " ".join(["v=spf1", *terms, setup.spf_all])


def expected(
    domain: str,
    dkim_keys: Sequence[tuple[str, str]],
    setup: DnsSetup,
    rotating: Sequence[tuple[Kind, str, str, str]] = (),
) -> list[Expected]:
    """Every record ``domain`` should publish; ``dkim_keys`` are (selector, TXT value) of the active keys,
    ``rotating`` (kind, selector, TXT value, note) the other keys of a DKIM rotation."""
    records = [
        Expected("mx", "MX", domain, setup.hostname, priority=10),
        Expected("spf", "TXT", domain, spf_value(domain, setup)),
        *(Expected("dkim", "TXT", f"{selector}._domainkey.{domain}", txt) for selector, txt in dkim_keys),
        *(
            Expected(kind, "TXT", f"{selector}._domainkey.{domain}", txt, note=note)
            for kind, selector, txt, note in rotating
        ),
        # RFC 9989: start at p=none (monitoring) with aggregate reports; no pct= (it is gone).
        Expected("dmarc", "TXT", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:{dmarc_report_address(domain)}"),
        Expected("mta_sts", "TXT", f"_mta-sts.{domain}", f"v=STSv1; id={mta_sts_id(mta_sts_policy(domain, setup))}"),
        Expected("mta_sts_host", "CNAME", f"mta-sts.{domain}", setup.hostname),
        Expected("tls_rpt", "TXT", f"_smtp._tls.{domain}", f"v=TLSRPTv1; rua=mailto:{tls_report_address(domain)}"),
    ]
    if setup.bimi_logo:
        records.append(Expected("bimi", "TXT", f"default._bimi.{domain}", f"v=BIMI1; l={setup.bimi_logo}"))
    for ip in setup.sending_ips(domain):
        records.append(Expected("ptr", "PTR", ipaddress.ip_address(ip).reverse_pointer, setup.hostname, ip=ip))
    return records


# --------------------------------------------------------------------------- checks


async def check(resolver: Resolver, domain: str, records: Sequence[Expected], setup: DnsSetup) -> list[Finding]:
    """Look every record up; one Finding per record, in order."""
    return list(await asyncio.gather(*(_check_one(resolver, domain, r, setup) for r in records)))


async def _check_one(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    try:
        return await _CHECKS[record.kind](resolver, domain, record, setup)
    except DnsError as exc:
        return Finding("UNKNOWN", f"the lookup failed ({exc}); try again later")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tags(text: str) -> dict[str, str]:
    """tag=value pairs split on ";" (DKIM, MTA-STS, TLS-RPT, BIMI records); names lower-cased."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _starts(text: str, version: str) -> bool:
    # The version tag comes first ("v=STSv1", "v=TLSRPTv1", "v=BIMI1"), spaces around "=" allowed.
    name, equals, value = text.split(";", 1)[0].partition("=")
    return bool(equals) and name.strip().lower() == "v" and value.strip() == version


async def _mx(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    hosts = await resolver.mx(domain)
    if not hosts:
        return Finding("MISSING", f"no MX record at {domain}")
    if len(hosts) == 1 and hosts[0][1] in (".", ""):
        return Finding("INVALID", f"{domain} publishes a null MX (RFC 7505): it refuses all mail")
    ours = to_ascii(setup.hostname)
    names = [host for _, host in hosts]
    if ours not in names:
        return Finding("INVALID", f"MX points at {', '.join(names)}, not {ours}")
    preference = min(pref for pref, host in hosts if host == ours)
    before = [host for pref, host in hosts if pref < preference]
    if before:
        return Finding("VALID", f"MX {preference} {ours}; but {', '.join(before)} come first and get the mail")
    return Finding("VALID", f"MX {preference} {ours}")


def _is_spf(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


async def _spf(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    found = [text for text in await resolver.txt(domain) if _is_spf(text)]
    if not found:
        return Finding("MISSING", f"no v=spf1 TXT record at {domain}")
    if len(found) > 1:
        # RFC 7208 §4.5: more than one record is a permerror for every receiver.
        return Finding("INVALID", f"{len(found)} v=spf1 records at {domain}: receivers see an error; merge them")
    text = found[0]
    shown = _short(text)
    try:
        spf.parse_record(text)
    except spf.SpfSyntaxError as exc:
        return Finding("INVALID", f"found {shown!r} but it does not parse: {exc}")
    ips = setup.sending_ips(domain) or await resolver.a(setup.hostname)
    if not ips:
        return Finding(
            "UNKNOWN",
            f"found {shown!r}, but the sending address is unknown: set [outbound] source or an A record for "
            f"{setup.hostname}",
        )
    sender = f"postmaster@{domain}"
    for ip in ips:
        result = await spf.check_host(resolver, ip, domain, sender, setup.hostname)
        if result.result == "temperror":
            return Finding("UNKNOWN", f"found {shown!r} but a lookup failed while evaluating it: {result.reason}")
        if result.result == "permerror":
            return Finding("INVALID", f"found {shown!r} but it is broken: {result.reason}")
        if result.result != "pass":
            return Finding("INVALID", f"found {shown!r} but {ip} is not authorised (SPF {result.result})")
    # Evaluate for an address nobody sends from: the whole record runs, so its lookups are counted
    # and what it says to strangers (the final "all") shows.
    probe = await spf.check_host(resolver, _PROBE_IP, domain, sender, setup.hostname)
    authorised = ", ".join(ips)
    lookups = f"{probe.lookups} of 10 DNS lookups"
    if probe.result == "temperror":
        return Finding("UNKNOWN", f"found {shown!r} but a lookup failed while evaluating it: {probe.reason}")
    if probe.result == "permerror":
        return Finding("INVALID", f"found {shown!r}; it authorises {authorised} but is broken: {probe.reason}")
    if probe.result in ("pass", "neutral", "none"):
        return Finding(
            "INVALID",
            f"found {shown!r}: it authorises {authorised} but does not refuse other senders (SPF {probe.result} "
            "for anyone else); end it with -all",
        )
    if probe.result == "softfail":
        return Finding("VALID", f"authorises {authorised}; ends in ~all (-all is stronger); {lookups}")
    return Finding("VALID", f"authorises {authorised}; ends in -all; {lookups}")


def _dkim_key(text: str) -> str:
    return re.sub(r"\s+", "", _tags(text).get("p", ""))


async def _dkim(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    texts = await resolver.txt(record.name)
    if not texts:
        return Finding("MISSING", f"no TXT record at {record.name}")
    want = _dkim_key(record.value)
    keys = [_dkim_key(text) for text in texts]
    if want in keys:
        if len(texts) > 1:
            return Finding("INVALID", f"{len(texts)} TXT records at {record.name}: verifiers may pick the wrong one")
        return Finding("VALID", "the public key matches this selector's signing key")
    if keys == [""]:
        return Finding("INVALID", f"the record at {record.name} has an empty p= (a revoked key)")
    return Finding("INVALID", f"a TXT record is at {record.name} but its p= is not this selector's public key")


async def _dkim_retired(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    if not await resolver.txt(record.name):
        return Finding("REMOVE", "already gone from DNS: nothing left to do")
    return Finding("REMOVE", "no message is signed with this key any more: delete the record")


def _dmarc_records(texts: Sequence[str]) -> list[tuple[str, dmarc.DmarcRecord]]:
    return [(text, parsed) for text in texts if (parsed := dmarc.parse_record(text)) is not None]


async def _dmarc(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    found = _dmarc_records(await resolver.txt(f"_dmarc.{domain}"))
    if len(found) > 1:
        # RFC 9989 §4.10 step 2: several records at one name are all discarded.
        return Finding("INVALID", f"{len(found)} DMARC records at _dmarc.{domain}: receivers ignore them all")
    if not found:
        # RFC 9989 §4.10: with no record of its own, the domain falls under a parent's record.
        for target in dmarc.tree_walk_targets(domain)[1:]:
            above = _dmarc_records(await resolver.txt(f"_dmarc.{target}"))
            if len(above) == 1 and not above[0][1].invalid_policy:
                parent = above[0][1]
                policy = parent.sp or parent.p or "none"
                return Finding(
                    "VALID",
                    f"no record at _dmarc.{domain}; _dmarc.{target} covers it (policy {policy}); publish "
                    f"the record here to get this domain's reports",
                )
        return Finding("MISSING", f"no DMARC record at _dmarc.{domain} or above it")
    text, parsed = found[0]
    if parsed.invalid_policy:
        return Finding("INVALID", f"found {_short(text)!r} but a policy tag is invalid: {', '.join(parsed.errors)}")
    if parsed.p is None:
        return Finding("INVALID", f"found {_short(text)!r} but it has no p= tag; start with p=none")
    notes = [f"p={parsed.p}"]
    if re.search(r";\s*pct\s*=", text, re.IGNORECASE):
        notes.append("pct= is gone in RFC 9989 and ignored")
    ours = f"mailto:{dmarc_report_address(domain)}"
    if ours not in (uri.lower() for uri in parsed.rua):
        notes.append(f"rua does not include {ours}: this server sees no aggregate reports")
    if parsed.p == "none":
        notes.append("monitoring only: move to quarantine, then reject, once reports show aligned mail")
    return Finding("VALID", "; ".join(notes))


async def _one_versioned(resolver: Resolver, name: str, version: str) -> tuple[Finding | None, dict[str, str]]:
    texts = [text for text in await resolver.txt(name) if _starts(text, version)]
    if not texts:
        return Finding("MISSING", f"no v={version} TXT record at {name}"), {}
    if len(texts) > 1:
        return Finding("INVALID", f"{len(texts)} v={version} records at {name}: receivers ignore them all"), {}
    return None, _tags(texts[0])


async def _mta_sts(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    failed, tags = await _one_versioned(resolver, record.name, "STSv1")
    if failed is not None:
        return failed
    published = tags.get("id", "")
    if not _STS_ID.fullmatch(published):
        return Finding("INVALID", f"the record at {record.name} needs id= of 1 to 32 letters and digits")
    if published != _tags(record.value)["id"]:
        return Finding("VALID", f"id={published}; change it to {_tags(record.value)['id']} so senders fetch our policy")
    return Finding("VALID", f"id={published} matches the policy served at https://mta-sts.{domain}/")


async def _mta_sts_host(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    theirs = set(await resolver.a(record.name))  # the resolver follows the CNAME
    if not theirs:
        return Finding("MISSING", f"{record.name} does not resolve")
    ours = set(await resolver.a(setup.hostname))
    if not ours:
        return Finding("UNKNOWN", f"{setup.hostname} does not resolve, so {record.name} cannot be compared with it")
    if theirs & ours:
        return Finding("VALID", f"{record.name} reaches this server ({', '.join(sorted(theirs & ours))})")
    return Finding("INVALID", f"{record.name} resolves to {', '.join(sorted(theirs))}, not to {setup.hostname}")


async def _tls_rpt(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    failed, tags = await _one_versioned(resolver, record.name, "TLSRPTv1")
    if failed is not None:
        return failed
    if not tags.get("rua"):
        return Finding("INVALID", f"the record at {record.name} has no rua=")
    ours = f"mailto:{tls_report_address(domain)}"
    if ours not in tags["rua"].lower():
        return Finding("VALID", f"reports go to {tags['rua']}, not to this server")
    return Finding("VALID", f"reports go to {ours}")


async def _bimi(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    failed, tags = await _one_versioned(resolver, record.name, "BIMI1")
    if failed is not None:
        return failed
    if tags.get("l") != setup.bimi_logo:
        return Finding("INVALID", f"l= is {tags.get('l')!r}, not {setup.bimi_logo!r}")
    return Finding("VALID", "the logo is shown only while DMARC is at p=quarantine or p=reject")


async def _ptr(resolver: Resolver, domain: str, record: Expected, setup: DnsSetup) -> Finding:
    names = await resolver.ptr(record.ip)
    ours = to_ascii(setup.hostname)
    if not names:
        return Finding("MISSING", f"{record.ip} has no PTR record (ask whoever runs the address)")
    if ours not in names:
        return Finding("INVALID", f"{record.ip} points at {', '.join(names)}, not at the EHLO name {ours}")
    forward = {ipaddress.ip_address(ip) for ip in await resolver.a(ours)}
    if ipaddress.ip_address(record.ip) not in forward:
        return Finding("INVALID", f"{record.ip} points at {ours} but {ours} does not resolve back to {record.ip}")
    return Finding("VALID", f"{record.ip} <-> {ours}, forward-confirmed, matches the EHLO name")


_CHECKS: Final[dict[str, Callable[[Resolver, str, Expected, DnsSetup], Awaitable[Finding]]]] = {
    "mx": _mx,
    "spf": _spf,
    "dkim": _dkim,
    "dkim_next": _dkim,
    "dkim_old": _dkim,
    "dkim_retired": _dkim_retired,
    "dmarc": _dmarc,
    "mta_sts": _mta_sts,
    "mta_sts_host": _mta_sts_host,
    "tls_rpt": _tls_rpt,
    "bimi": _bimi,
    "ptr": _ptr,
}


# --------------------------------------------------------------------------- the domain's status


def verdict(records: Sequence[Expected], findings: Sequence[Finding], previous: str) -> tuple[str, str | None]:
    """The domain's status and why: VERIFIED when MX, SPF, DKIM and DMARC are VALID.

    A record that is wrong makes it INVALID; only missing ones, PENDING (INVALID when it was VERIFIED:
    its records broke). Failed lookups alone never change a verdict: the last one stands (PENDING
    for a domain never verified).
    """
    required = [(r, f) for r, f in zip(records, findings, strict=True) if r.required]
    if all(f.status == "VALID" for _, f in required):
        return "VERIFIED", None
    wrong = [(r, f) for r, f in required if f.status in ("INVALID", "MISSING")]
    reason = "; ".join(f"{r.kind.upper()} {r.name}: {f.status.lower()}: {f.reason}" for r, f in wrong)
    if not wrong:
        unknown = "; ".join(f"{r.kind.upper()} {r.name}: {f.reason}" for r, f in required if f.status == "UNKNOWN")
        return (previous if previous == "VERIFIED" else "PENDING"), unknown
    if previous == "VERIFIED" or any(f.status == "INVALID" for _, f in wrong):
        return "INVALID", reason
    return "PENDING", reason
