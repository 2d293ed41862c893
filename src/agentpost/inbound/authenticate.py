"""Inbound step 1, authenticate: SPF (MAIL FROM and HELO), every DKIM signature, the ARC chain and DMARC.

``Authenticator.authenticate(envelope, raw)`` runs the checks of ``mailauth`` on the injected resolver
(SPF for both identities, DKIM and ARC concurrently, then DMARC on their results) and returns
``AuthResults``. What to do about them is ``inbound.verdict.decide``; how they are recorded is
``AuthResults.as_dict`` (the ``auth`` object of the API) and ``AuthResults.header`` (the
Authentication-Results field prepended to the stored message, RFC 8601).

Mail that did not come from the Internet is not checked: a copy delivered locally by our own
outbound (``internal=True``) and mail from a client in ``trusted`` networks (by default loopback,
as Postfix's mynetworks, OpenDMARC's IgnoreHosts and policyd-spf's skip_addresses do) get
``internal`` results.

ARC (RFC 8617) is recorded, and used only as the local policy of RFC 8617 §7.2: ``arc_trusted`` is
set when the chain passes, its newest sealer is one of ``trusted_sealers`` and that sealer recorded
``dmarc=pass`` in its ARC-Authentication-Results; ``verdict.decide`` may then accept a DMARC failure
(a forwarder or a mailing list that broke SPF and DKIM on the way).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agentpost.mailauth import arc, dkim_verify, dmarc, spf
from agentpost.mailauth.arc import ArcResult
from agentpost.mailauth.dkim_verify import DkimResult
from agentpost.mailauth.dmarc import DmarcResult
from agentpost.mailauth.spf import SpfResult
from agentpost.model import Envelope
from agentpost.net.dns import DnsError, Resolver, answered
from agentpost.proto import authresults
from agentpost.proto.address import AddressError, domain_of, split_address_list
from agentpost.proto.authresults import ResInfo
from agentpost.proto.memo import short_text_cache

__all__ = ["DEFAULT_TRUSTED", "AuthResults", "Authenticator", "header_from_domains"]

DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")
# Matched only where a line starts with "from" (found with bytes.find): a MULTILINE/IGNORECASE
# pattern tried at every offset of a header block with two DKIM signatures cost ~12 us. On the
# bytes, whose lower() keeps every offset (str.lower() does not: "\u0130" becomes two characters).
_FROM_FIELD: Final = re.compile(rb"from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE)
# Starts with a literal, so the regex engine skips ahead to each LF; "\r?\n\r?\n" has no
# literal prefix and was tried at every offset (~20 us a message).
_HEADER_END: Final = re.compile(rb"\n\r?\n")
MAX_HEADER_SCAN: Final = 256 * 1024  # the From field is looked for in at most this much header


@dataclass(frozen=True, slots=True)
class AuthResults:
    """What the checks found for one message. ``internal`` results carry no checks, only ``note``."""

    authserv_id: str
    spf: SpfResult | None = None  # MAIL FROM identity (the HELO one when MAIL FROM is <>)
    helo: SpfResult | None = None  # HELO identity, when checked separately
    dkim: Sequence[DkimResult] = ()
    dmarc: DmarcResult | None = None
    internal: bool = False
    note: str = ""  # why internal
    null_sender: bool = False  # MAIL FROM was <>: ``spf`` is the HELO identity's result
    arc: ArcResult | None = None
    # The newest ARC sealer is trusted by configuration and recorded dmarc=pass (RFC 8617 §7.2).
    arc_sealer_trusted: bool = False
    client_ip: str = ""  # for smtp.remote-ip in the arc result (RFC 8617 §10)

    @property
    def any_pass(self) -> bool:
        """Some identity authenticated (aligned or not): SPF for MAIL FROM, or a DKIM signature."""
        return (self.spf is not None and self.spf.result == "pass") or any(d.result == "pass" for d in self.dkim)

    @property
    def arc_trusted(self) -> bool:
        """The ARC chain passed and its newest sealer is trusted and saw dmarc=pass: it may stand in for DMARC."""
        return self.arc_sealer_trusted and self.arc is not None and self.arc.result == "pass"

    @property
    def some_temperror(self) -> bool:
        """A check of an identity DMARC could have used ended in a temporary DNS failure (or the ARC chain
        of a trusted sealer, which could have overridden a DMARC failure)."""
        return (
            (self.spf is not None and self.spf.result == "temperror")
            or any(d.result == "temperror" for d in self.dkim)
            or (self.arc_sealer_trusted and self.arc is not None and self.arc.result == "temperror")
        )

    def as_dict(self, verdict: str, reasons: Iterable[str]) -> dict[str, Any]:
        """The ``auth`` object of the API: each mechanism's result and domain, aligned ids, the verdict."""
        reasons = list(reasons)
        if self.internal:
            return {
                "verdict": verdict,
                "reasons": reasons,
                "internal": True,
                "note": self.note,
                "spf": None,
                "dkim": [],
                "dmarc": None,
                "arc": None,
                "aligned": {"spf": None, "dkim": []},
            }
        spf_dict: dict[str, Any] | None = None
        if self.spf is not None:
            spf_dict = {"result": self.spf.result, "domain": self.spf.domain, "reason": self.spf.reason}
            if self.helo is not None:
                spf_dict["helo"] = {"result": self.helo.result, "domain": self.helo.domain}
        dmarc_dict = None
        if self.dmarc is not None:
            d = self.dmarc
            dmarc_dict = {
                "result": d.result,
                "domain": d.header_from,
                "policy": d.policy,
                "disposition": d.disposition,
                "policy_domain": d.policy_domain or None,
                "testing": d.testing,
                "reason": d.reason,
            }
        return {
            "verdict": verdict,
            "reasons": reasons,
            "internal": False,
            "spf": spf_dict,
            "dkim": [
                {
                    "result": r.result,
                    "domain": r.domain,
                    "selector": r.selector,
                    "algorithm": r.algorithm,
                    "reason": r.reason,
                }
                for r in self.dkim
            ],
            "dmarc": dmarc_dict,
            "arc": self._arc_dict(),
            "aligned": {
                "spf": (self.dmarc.spf_aligned or None) if self.dmarc else None,
                "dkim": list(self.dmarc.dkim_aligned) if self.dmarc else [],
            },
        }

    def _arc_dict(self) -> dict[str, Any] | None:
        if self.arc is None:
            return None
        a = self.arc
        return {
            "result": a.result,
            "reason": a.reason,
            "instances": a.instances,
            "sealers": list(a.sealers),
            "oldest_pass": a.oldest_pass,
        }

    def header(self) -> bytes:
        """The Authentication-Results field (RFC 8601) for these results, CRLF-terminated."""
        if self.internal:
            return authresults.build(self.authserv_id, [])
        results: list[ResInfo] = []
        if self.spf is not None:
            identity = "smtp.helo" if self.helo is None and self.spf.domain and self.null_sender else "smtp.mailfrom"
            results.append(ResInfo("spf", self.spf.result, [(identity, self.spf.domain)], self.spf.reason))
        if self.helo is not None:
            results.append(ResInfo("spf", self.helo.result, [("smtp.helo", self.helo.domain)]))
        if not self.dkim:
            results.append(ResInfo("dkim", "none"))
        for r in self.dkim:
            props = [("header.d", r.domain), ("header.s", r.selector), ("header.a", r.algorithm), ("header.b", r.b)]
            results.append(ResInfo("dkim", r.result, [(k, v) for k, v in props if v], r.reason))
        if self.dmarc is not None:
            d = self.dmarc
            comment = f"p={d.policy} dis={d.disposition}" if d.record is not None else d.reason
            props = [("header.from", d.header_from)] if d.header_from else []
            results.append(ResInfo("dmarc", d.result, props, comment))
        if self.arc is not None:
            a = self.arc
            # RFC 8617 §10: arc=<none|pass|fail> header.oldest-pass=N smtp.remote-ip=<client>; a key lookup
            # that failed temporarily gives temperror (RFC 8601 §2.7), not a verdict.
            props = [("header.oldest-pass", str(a.oldest_pass))] if a.oldest_pass is not None else []
            if a.result != "none" and self.client_ip:
                props.append(("smtp.remote-ip", self.client_ip))
            comment = a.reason or (f"sealed by {a.newest_sealer}" if a.result == "pass" else "")
            results.append(ResInfo("arc", a.result, props, comment))
        return authresults.build(self.authserv_id, results)


def header_from_domains(raw: bytes) -> list[str]:
    """The domains of the RFC5322.From mailboxes, in order, duplicates dropped (at most a few)."""
    if raw.startswith((b"\r\n", b"\n")):
        return []
    found = _HEADER_END.search(raw, 0, MAX_HEADER_SCAN)
    head = raw[: found.start() if found else MAX_HEADER_SCAN]
    domains: list[str] = []
    for match in _from_fields(head):
        # Decoded after matching: UTF-8 never puts an LF byte inside a multi-byte sequence, so
        # the field's extent is the same in the bytes and in the text.
        value = match.group(1).decode("utf-8", "replace")
        for item in split_address_list(value.replace("\r", "").replace("\n", "")):
            try:
                domain = domain_of(item)
            except AddressError:
                # Unparseable: keep the text after the last "@", so DMARC reports it (permerror).
                _, at, rest = item.rpartition("@")
                domain = rest.strip(" >\t").lower() if at else ""
            if domain and domain not in domains:
                domains.append(domain)
    return domains[:10]


def _from_fields(head: bytes) -> list[re.Match[bytes]]:
    """The From fields of a header block: lines that start with "from" (any case), then a colon."""
    lowered = b"\n" + head.lower()
    found = []
    at = lowered.find(b"\nfrom")
    while at >= 0:
        match = _FROM_FIELD.match(head, at)  # ``at`` in ``lowered`` is the line's start in ``head``
        if match is not None:
            found.append(match)
        at = lowered.find(b"\nfrom", at + 1)
    return found


def _ip_in(ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _is_domain(name: str) -> bool:
    return "." in name and not name.startswith("[") and not name.replace(".", "").isdigit()


class Authenticator:
    """Runs the checks for the MX; one per process, sharing its (caching) resolver."""

    def __init__(
        self,
        resolver: Resolver,
        authserv_id: str,
        trusted: Iterable[str] = DEFAULT_TRUSTED,
        trusted_sealers: Iterable[str] = (),
    ) -> None:
        self.resolver = resolver
        self.authserv_id = authserv_id
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        networks = self.trusted
        # Client IP -> in a trusted network, remembered: parsing the address was ~20 us of every message.
        self._is_trusted = short_text_cache(64)(lambda ip: _ip_in(ip, networks))
        # RFC 8617 §7.2: ARC sealers whose chains may override a DMARC failure ([mx] arc_trusted_sealers).
        self.trusted_sealers = frozenset(d.strip().lower().rstrip(".") for d in trusted_sealers if d.strip())

    async def authenticate(self, envelope: Envelope, raw: bytes, *, internal: bool = False) -> AuthResults:
        if internal:
            return AuthResults(self.authserv_id, internal=True, note="local delivery from a hosted inbox")
        if self._is_trusted(envelope.client_ip):
            return AuthResults(self.authserv_id, internal=True, note="client in mx.trusted_networks")
        ip = envelope.client_ip
        helo = envelope.helo.strip()
        from_domains = header_from_domains(raw)
        now = envelope.received_at.timestamp()
        checks: list[Any] = [
            self._spf(spf.check_mail_from(self.resolver, ip, envelope.mail_from, helo, receiver=self.authserv_id)),
            dkim_verify.verify(self.resolver, raw, now=now),
            arc.verify(self.resolver, raw),
        ]
        # RFC 7208 §2.3: the HELO identity too, unless MAIL FROM is <> (then it is the one checked).
        check_helo = bool(envelope.mail_from) and _is_domain(helo)
        if check_helo:
            checks.append(self._spf(spf.check_helo(self.resolver, ip, helo, receiver=self.authserv_id)))
        # The first question of each check (DKIM's keys are known only inside dkim_verify, which
        # decides the same way). A sender seen within the cache's lifetime is answered from it.
        first = [envelope.mail_from.rpartition("@")[2] or helo, *([helo] if check_helo else [])]
        dmarc_name = f"_dmarc.{from_domains[0]}" if from_domains else None
        if dmarc_name is not None:
            first.append(dmarc_name)
        if answered(self.resolver, first):
            try:
                done = [await check for check in checks]
            finally:
                for check in checks:
                    check.close()  # the ones not reached when a check raised
        else:
            if dmarc_name is not None:
                # Warm the resolver's cache with the first DMARC question while SPF and DKIM run.
                checks.append(self._prefetch(dmarc_name))
            done = await asyncio.gather(*checks)
        spf_result: SpfResult = done[0]
        dkim_results: list[DkimResult] = done[1]
        arc_result: ArcResult = done[2]
        helo_result: SpfResult | None = done[3] if check_helo else None
        dmarc_result = await dmarc.evaluate(
            self.resolver, from_domains, spf_result.result, spf_result.domain or None, dkim_results
        )
        return AuthResults(
            self.authserv_id,
            spf=spf_result,
            helo=helo_result,
            dkim=dkim_results,
            dmarc=dmarc_result,
            null_sender=not envelope.mail_from,
            arc=arc_result,
            arc_sealer_trusted=(arc_result.newest_sealer in self.trusted_sealers and arc_result.sealed_dmarc == "pass"),
            client_ip=ip,
        )

    async def _spf(self, check: Any) -> SpfResult:
        try:
            result: SpfResult = await check
        except ValueError as exc:  # not an IP address: nothing to check
            return SpfResult("none", "", reason=str(exc))
        return result

    async def _prefetch(self, name: str) -> None:
        with contextlib.suppress(DnsError):
            await self.resolver.txt(name)
