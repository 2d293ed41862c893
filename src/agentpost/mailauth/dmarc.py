"""DMARC evaluation (RFC 9989): policy discovery and Organizational Domains by DNS Tree Walk, alignment, the policy.

``evaluate(resolver, header_from_domain, spf_result, spf_domain, dkim_results)`` returns a
``DmarcResult``: pass / fail / none / temperror / permerror, the Domain Owner Assessment Policy that
applies to the Author Domain (p=, sp= or np=, lowered one step under t=y), the aligned identifiers and a
reason. What to do with a failing message stays the caller's decision (RFC 9989 §5.4 and §7.4: a
receiver MUST NOT reject on p=reject alone); ``disposition`` is the policy when the result is fail.

RFC 9989 replaced RFC 7489: no public suffix list (the Organizational Domain is found by the DNS Tree
Walk of §4.10, at most eight queries), no ``pct``/``rf``/``ri`` (ignored like any unknown tag), and new
``np`` (non-existent subdomains), ``psd`` (public suffix domains) and ``t`` (testing) tags.

Choices where the RFC leaves room, so that callers can rely on them:

- No From domain: ``permerror`` (RFC 9989 §5.3.1: DMARC validation is not possible; the message is not
  valid RFC 5322). Several distinct From domains (§5.3.1 allows going on anyway, §11.5): each domain is
  evaluated, at most ``MAX_AUTHOR_DOMAINS`` (more is a ``permerror``), and the weakest result is returned
  (fail, then temperror, permerror, none, pass; among fails the strictest policy), so that adding a
  second From address never turns a fail into a pass.
- Any DNS error that stops policy discovery, or every alignment check, is a ``temperror``; a DNS error in
  one alignment walk does not hide a pass found by another identifier.
- A record with an invalid p=, sp= or np= value (§4.10.1): read as p=none when rua= holds a usable URI,
  else ``permerror`` (RFC 9989 §9.2: "an improperly formatted DMARC Policy Record"). A record without
  p= is read as p=none (§4.7).
- Several DMARC records at one name are all discarded (§4.10 step 2): the walk goes on above it.
- Non-existent subdomains (np=): RFC 9989 §3.2.13 means NXDOMAIN. The Resolver maps NXDOMAIN and NODATA
  both to an empty answer, so unless the caller says (``author_domain_exists``), a domain with no A,
  AAAA, MX or TXT record is taken as non-existent; those lookups are made only when np= would change
  the policy.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from agentpost.mailauth.dkim_verify import DkimResult
from agentpost.net.dns import DnsError, Resolver, to_ascii
from agentpost.proto.memo import short_text_cache

__all__ = [
    "MAX_AUTHOR_DOMAINS",
    "MAX_TREE_WALK",
    "DmarcRecord",
    "DmarcResult",
    "DmarcStatus",
    "Policy",
    "evaluate",
    "organizational_domain",
    "parse_record",
    "tree_walk_targets",
]

Policy = Literal["none", "quarantine", "reject"]
DmarcStatus = Literal["pass", "fail", "none", "temperror", "permerror"]
Alignment = Literal["r", "s"]

# RFC 9989 §4.10: a DNS Tree Walk makes at most eight queries, however many labels the name has.
MAX_TREE_WALK: Final = 8
MAX_AUTHOR_DOMAINS: Final = 4

_POLICIES: Final[dict[str, Policy]] = {"none": "none", "quarantine": "quarantine", "reject": "reject"}
_ALIGNMENTS: Final[dict[str, Alignment]] = {"r": "r", "s": "s"}
# RFC 9989 §4.7 t=y: the policy applied to failing mail is one step below the one published.
_ONE_STEP_DOWN: Final[dict[Policy, Policy]] = {"none": "none", "quarantine": "none", "reject": "quarantine"}
_TAG_NAME: Final = re.compile(r"[A-Za-z]+")  # RFC 9989 §4.8: dmarc-tag = 1*ALPHA equals 1*dmarc-value
_URI_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_WSP: Final = " \t\r\n"
_RANK: Final[dict[str, int]] = {"fail": 4, "temperror": 3, "permerror": 2, "none": 1, "pass": 0}
_STRICTNESS: Final[dict[str, int]] = {"reject": 2, "quarantine": 1, "none": 0}


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A DMARC Policy Record (RFC 9989 §4.7), values checked; syntax errors fall back to defaults (§4.8)."""

    p: Policy | None = None  # None: absent, read as "none"
    sp: Policy | None = None
    np: Policy | None = None
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    psd: Literal["y", "n", "u"] = "u"
    testing: bool = False  # t=y
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    invalid_policy: bool = False  # p=, sp= or np= present with a value that is not a policy
    errors: tuple[str, ...] = field(default=())  # what was discarded, for reasons and reports


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC verdict on one message."""

    result: DmarcStatus
    header_from: str  # the Author Domain evaluated (A-label); "" when the message has none
    policy: Policy = "none"  # the Domain Owner Assessment Policy for the Author Domain, after t=y
    policy_tag: str = ""  # where it came from: "p", "sp" or "np"; "" when no record applies
    policy_domain: str = ""  # the name whose _dmarc record applies
    org_domain: str = ""  # the Author Domain's Organizational Domain, when it had to be found
    record: DmarcRecord | None = None
    testing: bool = False  # t=y lowered the policy one step
    spf_aligned: str = ""  # the SPF-authenticated domain, when it passed and is aligned
    dkim_aligned: tuple[str, ...] = ()  # d= of every passing, aligned DKIM signature
    reason: str = ""

    @property
    def disposition(self) -> Policy:
        """The policy the Domain Owner asks for this message: the policy on fail, "none" otherwise."""
        return self.policy if self.result == "fail" else "none"


# --------------------------------------------------------------------------- records


# Cached by the record's text: a sender's mail asks for the same record over and over, and a
# DmarcRecord is immutable.
@short_text_cache(1024)
def parse_record(text: str) -> DmarcRecord | None:
    """The record in one TXT string, or None when it is not a DMARC record (it must start with v=DMARC1)."""
    segments = text.split(";")
    name, equals, value = segments[0].partition("=")
    # RFC 9989 §4.7: v= MUST be the first tag and its value is case-sensitive; otherwise ignore the record.
    if not equals or name.strip(_WSP).lower() != "v" or value.strip(_WSP) != "DMARC1":
        return None
    tags: dict[str, str] = {}
    errors: list[str] = []
    for segment in segments[1:]:
        if not segment.strip(_WSP):
            continue
        name, equals, value = segment.partition("=")
        name = name.strip(_WSP).lower()
        if not equals or not _TAG_NAME.fullmatch(name):
            errors.append(f"malformed tag {segment.strip(_WSP)[:40]!r}")
        elif name in tags:
            errors.append(f"repeated {name}=")
        else:
            tags[name] = value.strip(_WSP)

    def policy(tag: str) -> Policy | None:
        if tag not in tags:
            return None
        found = _POLICIES.get(tags[tag].lower())
        if found is None:
            errors.append(f"invalid {tag}={tags[tag][:20]}")
        return found

    def alignment(tag: str) -> Alignment:
        found = _ALIGNMENTS.get(tags.get(tag, "r").lower())
        if found is None:
            errors.append(f"invalid {tag}={tags[tag][:20]}")
            return "r"
        return found

    p, sp, np = policy("p"), policy("sp"), policy("np")
    invalid_policy = any(tag in tags and found is None for tag, found in (("p", p), ("sp", sp), ("np", np)))
    psd_value = tags.get("psd", "u").lower()
    psd: Literal["y", "n", "u"] = "y" if psd_value == "y" else "n" if psd_value == "n" else "u"
    if psd_value not in ("y", "n", "u"):
        errors.append(f"invalid psd={tags['psd'][:20]}")
    testing_value = tags.get("t", "n").lower()
    if testing_value not in ("y", "n"):
        errors.append(f"invalid t={tags['t'][:20]}")
    return DmarcRecord(
        p=p,
        sp=sp,
        np=np,
        adkim=alignment("adkim"),
        aspf=alignment("aspf"),
        psd=psd,
        testing=testing_value == "y",
        rua=_uris(tags.get("rua", "")),
        ruf=_uris(tags.get("ruf", "")),
        fo=tags.get("fo", "0"),
        invalid_policy=invalid_policy,
        errors=tuple(errors),
    )


def _uris(value: str) -> tuple[str, ...]:
    """The syntactically usable URIs of a dmarc-urilist; the obsolete "!size" suffix is dropped (RFC 9989 §4.8)."""
    uris = []
    for item in value.split(","):
        uri = item.strip(_WSP).split("!", 1)[0]
        if _URI_SCHEME.fullmatch(uri):
            uris.append(uri)
    return tuple(uris)


# --------------------------------------------------------------------------- the DNS Tree Walk


def tree_walk_targets(domain: str) -> list[str]:
    """The names a DNS Tree Walk from ``domain`` queries, in order (RFC 9989 §4.10): at most eight.

    The domain itself; then, for fewer than eight labels, each parent in turn; for eight or more, the
    name cut to its last seven labels and each parent of that.
    """
    labels = domain.split(".")
    targets = [domain]
    rest = labels[-(MAX_TREE_WALK - 1) :] if len(labels) >= MAX_TREE_WALK else labels[1:]
    while rest:
        targets.append(".".join(rest))
        rest = rest[1:]
    return targets


def organizational_domain(start: str, found: Sequence[tuple[str, DmarcRecord]]) -> str:
    """RFC 9989 §4.10.2: the Organizational Domain of ``start`` from the records its walk found, longest first."""
    for name, record in found:
        if record.psd == "n":
            return name
        if record.psd == "y" and name != start:
            # The domain one label below the public suffix domain, on the way to the start.
            return ".".join(start.split(".")[-(name.count(".") + 2) :])
    return found[-1][0] if found else start


class _Discovery:
    """The _dmarc lookups of one evaluation, each name asked once; DnsError passes through."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.records: dict[str, DmarcRecord | None] = {}
        self.notes: list[str] = []
        self.org_domains: dict[str, str] = {}

    async def record(self, domain: str) -> DmarcRecord | None:
        if domain in self.records:
            return self.records[domain]
        texts = await self.resolver.txt(f"_dmarc.{domain}")
        records = [record for record in map(parse_record, texts) if record is not None]
        if len(records) > 1:
            # RFC 9989 §4.10 step 2: several DMARC records for one name are all discarded.
            self.notes.append(f"{len(records)} DMARC records at _dmarc.{domain}, all ignored")
        record = records[0] if len(records) == 1 else None
        self.records[domain] = record
        return record

    async def walk(self, domain: str) -> list[tuple[str, DmarcRecord]]:
        """The records a Tree Walk from ``domain`` finds, longest name first; it stops at psd=y or psd=n."""
        found: list[tuple[str, DmarcRecord]] = []
        for target in tree_walk_targets(domain):
            record = await self.record(target)
            if record is not None:
                found.append((target, record))
                if record.psd != "u":
                    break
        return found

    async def org_domain(self, domain: str) -> str:
        if domain not in self.org_domains:
            self.org_domains[domain] = organizational_domain(domain, await self.walk(domain))
        return self.org_domains[domain]


# --------------------------------------------------------------------------- evaluation


async def evaluate(
    resolver: Resolver,
    header_from_domain: str | Sequence[str] | None,
    spf_result: str,
    spf_domain: str | None,
    dkim_results: Sequence[DkimResult],
    *,
    author_domain_exists: bool | None = None,
) -> DmarcResult:
    """DMARC for one message (RFC 9989 §5.3).

    ``header_from_domain``: the domain(s) of the RFC5322.From addresses. ``spf_result`` and
    ``spf_domain``: the SPF result for the MAIL FROM identity and its domain (RFC 9989 §4.4.2).
    ``dkim_results``: ``dkim_verify.verify()``'s results; only "pass" counts. ``author_domain_exists``:
    whether the Author Domain exists (RFC 9989 §3.2.13), when the caller knows; otherwise looked up.
    """
    given = [header_from_domain] if isinstance(header_from_domain, str) else list(header_from_domain or ())
    domains: list[str] = []
    for domain in given:
        normalised = _normalise(domain)
        if normalised is None:
            return DmarcResult("permerror", domain.strip().lower(), reason=f"invalid From domain {domain[:80]!r}")
        if normalised not in domains:
            domains.append(normalised)
    if not domains:
        return DmarcResult("permerror", "", reason="no RFC5322.From domain (RFC 9989 §5.3.1)")
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return DmarcResult("permerror", domains[0], reason=f"{len(domains)} From domains: too many to evaluate")
    discovery = _Discovery(resolver)
    identifiers = _Identifiers(spf_result, spf_domain, dkim_results)
    if len(domains) == 1:
        return await _evaluate_domain(discovery, domains[0], identifiers, author_domain_exists)
    results = [await _evaluate_domain(discovery, domain, identifiers, author_domain_exists) for domain in domains]
    weakest = max(results, key=lambda r: (_RANK[r.result], _STRICTNESS[r.disposition]))
    return replace(
        weakest,
        reason=f"{len(domains)} From domains (RFC 9989 §5.3.1); weakest {weakest.header_from}: {weakest.reason}",
    )


@dataclass(frozen=True, slots=True)
class _Identifiers:
    """The Authenticated Identifiers of the message (RFC 9989 §4.3)."""

    spf_result: str
    spf_domain: str | None
    dkim_results: Sequence[DkimResult]

    def spf(self) -> str | None:
        if self.spf_result.strip().lower() != "pass" or not self.spf_domain:
            return None
        return _normalise(self.spf_domain)

    def dkim(self) -> list[str]:
        domains: list[str] = []
        for result in self.dkim_results:
            domain = _normalise(result.domain) if result.result == "pass" and result.domain else None
            if domain is not None and domain not in domains:
                domains.append(domain)
        return domains


async def _evaluate_domain(
    discovery: _Discovery, author: str, identifiers: _Identifiers, author_exists: bool | None
) -> DmarcResult:
    discovery.notes.clear()  # notes are per Author Domain; the lookups stay cached
    try:
        found = await _discover_policy(discovery, author, author_exists)
    except DnsError as exc:
        result: DmarcStatus = "temperror" if exc.temporary else "permerror"
        return DmarcResult(result, author, reason=f"DMARC policy discovery failed: {exc}")
    if isinstance(found, DmarcResult):
        return found
    record, policy_domain, tag, published = found
    notes = list(discovery.notes)
    if record.invalid_policy:
        if not record.rua:
            # RFC 9989 §4.10.1: an invalid p=, sp= or np= and no usable rua=: no DMARC processing.
            return DmarcResult(
                "permerror",
                author,
                policy_domain=policy_domain,
                record=record,
                reason=f"malformed DMARC record at _dmarc.{policy_domain}: {'; '.join(record.errors)}",
            )
        notes.append(f"invalid policy in _dmarc.{policy_domain} read as p=none, since rua= is given")
        published = "none"
    policy = _ONE_STEP_DOWN[published] if record.testing else published

    aligned_spf = ""
    aligned_dkim: list[str] = []
    errors: list[str] = []
    spf_domain = identifiers.spf()
    if spf_domain is not None:
        try:
            if await _aligned(discovery, author, spf_domain, record.aspf):
                aligned_spf = spf_domain
        except DnsError as exc:
            errors.append(f"SPF alignment of {spf_domain}: {exc}")
    for dkim_domain in identifiers.dkim():
        try:
            if await _aligned(discovery, author, dkim_domain, record.adkim):
                aligned_dkim.append(dkim_domain)
        except DnsError as exc:
            errors.append(f"DKIM alignment of {dkim_domain}: {exc}")

    # RFC 9989 §5.3.5: one aligned Authenticated Identifier is a pass; none (or no identifier at all) a fail.
    if aligned_spf or aligned_dkim:
        status: DmarcStatus = "pass"
        why = ", ".join(
            ([f"SPF {aligned_spf} aligned"] if aligned_spf else []) + [f"DKIM d={d} aligned" for d in aligned_dkim]
        )
    elif errors:
        # RFC 9989 §5.3.6: a DNS query that did not complete means neither pass nor fail.
        status, why = "temperror", "; ".join(errors)
    else:
        status, why = "fail", _why_not_aligned(identifiers, spf_domain, record)
    if record.testing and published != "none":
        notes.append(f"t=y: {published} lowered to {policy}")
    return DmarcResult(
        status,
        author,
        policy=policy,
        policy_tag=tag,
        policy_domain=policy_domain,
        org_domain=discovery.org_domains.get(author, ""),
        record=record,
        testing=record.testing,
        spf_aligned=aligned_spf,
        dkim_aligned=tuple(aligned_dkim),
        reason="; ".join([why, *notes]),
    )


async def _discover_policy(
    discovery: _Discovery, author: str, author_exists: bool | None
) -> tuple[DmarcRecord, str, str, Policy] | DmarcResult:
    """RFC 9989 §4.10.1: (record, the name it is at, "p"/"sp"/"np", the policy it sets), or a "none" result."""
    record = await discovery.record(author)
    if record is not None:
        return record, author, "p", record.p or "none"
    found = await discovery.walk(author)  # the author's own lookup is cached: the walk goes on from its parent
    if not found:
        reason = "; ".join(["no DMARC record for the Author Domain or above it", *discovery.notes])
        return DmarcResult("none", author, reason=reason)
    org = organizational_domain(author, found)
    discovery.org_domains[author] = org
    by_name = dict(found)
    record = by_name.get(org)
    policy_domain = org
    if record is None and org != author:
        record = await discovery.record(org)  # past the walk's eight queries, for very long names
    if record is None:
        # The Organizational Domain publishes nothing: the Public Suffix Domain's record applies.
        psd = next(((name, r) for name, r in found if r.psd == "y"), None)
        if psd is None:  # not reached: without psd=y the Organizational Domain is a name with a record
            return DmarcResult("none", author, reason=f"no DMARC record at the Organizational Domain {org}")
        policy_domain, record = psd
    # The Author Domain is a subdomain of the policy domain: sp= if it exists, np= if not (RFC 9989 §4.10.1).
    subdomain_policy = record.sp or record.p or "none"
    if record.np is None or record.np == subdomain_policy:
        return record, policy_domain, "sp" if record.sp else "p", subdomain_policy
    if author_exists is None:
        author_exists = await _exists(discovery.resolver, author)
    if author_exists:
        return record, policy_domain, "sp" if record.sp else "p", subdomain_policy
    return record, policy_domain, "np", record.np


async def _exists(resolver: Resolver, domain: str) -> bool:
    """Whether ``domain`` has any of A, AAAA, MX or TXT: the nearest the Resolver gets to "not NXDOMAIN"."""
    answers = await asyncio.gather(resolver.a(domain), resolver.mx(domain), resolver.txt(domain))
    return any(answers)


async def _aligned(discovery: _Discovery, author: str, identifier: str, mode: Alignment) -> bool:
    """RFC 9989 §3.2.10: strict means identical; relaxed means the same Organizational Domain (§4.10.2)."""
    if identifier == author:
        return True
    if mode == "s":
        return False
    org = await discovery.org_domain(author)
    # An Organizational Domain is the name itself or one of its parents: outside ``org``, no walk can match.
    if identifier != org and not identifier.endswith("." + org):
        return False
    return await discovery.org_domain(identifier) == org


def _why_not_aligned(identifiers: _Identifiers, spf_domain: str | None, record: DmarcRecord) -> str:
    parts = []
    if spf_domain is None:
        parts.append(f"SPF {identifiers.spf_result.strip().lower() or 'none'}")
    else:
        parts.append(f"SPF pass for {spf_domain} not aligned (aspf={record.aspf})")
    passing = identifiers.dkim()
    if passing:
        parts.append(f"DKIM pass for {', '.join(passing)} not aligned (adkim={record.adkim})")
    else:
        parts.append("no DKIM pass")
    return "no aligned identifier: " + ", ".join(parts)


def _normalise(domain: str) -> str | None:
    """The A-label form, lower case, no final dot; None when it is not a usable domain name."""
    try:
        name = to_ascii(domain.strip().rstrip("."))
    except DnsError:
        return None
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label or len(label) > 63 for label in labels):
        return None
    return name
