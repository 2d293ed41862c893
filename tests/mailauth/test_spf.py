"""SPF (RFC 7208): the openspf RFC 7208 test suite from ../shared/testdata, plus the pure parts.

The suite's zones are turned into a FakeResolver the way its reference driver (pyspf's
testspf.py) serves them: records of the obsolete SPF type are copied to TXT unless the name has
TXT records of its own ("TXT: NONE" only blocks the copy), a TIMEOUT marker fails every query for
a type with no record listed before it, and a CNAME is followed to its target.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import dns.reversename
import pytest
import yaml

from agentpost.mailauth import spf
from agentpost.net.dns import DnspythonResolver, FakeResolver, Resolver
from dnsserver import DnsServer

SUITE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "spf" / "rfc7208-tests.yml"
QUERY_TYPES = ("A", "AAAA", "MX", "TXT", "PTR")


class _Timeout(Exception):
    pass


@dataclass(frozen=True)
class Case:
    id: str
    scenario: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]
    explanation: str | None
    zonedata: dict[str, list[Any]]


def _driver_rows(records: list[Any]) -> list[Any]:
    """A name's records in the order the reference driver serves them (SPF copied to TXT last)."""
    rows: list[Any] = []
    copies: list[tuple[str, Any]] = []
    has_txt = False
    for record in records:
        if isinstance(record, str):  # "TIMEOUT"
            rows.append(record)
            continue
        for rtype, value in record.items():
            if rtype == "TXT":
                has_txt = True
            elif rtype == "SPF":
                copies.append(("TXT", value))
            if value != "NONE":
                rows.append((rtype, value))
    return rows if has_txt else rows + copies


def _answer(zone: dict[str, list[Any]], name: str, qtype: str, depth: int = 0) -> list[Any]:
    rows = zone.get(name.rstrip(".").lower())
    if rows is None:
        return []  # NXDOMAIN
    cname = [value for row in rows if row != "TIMEOUT" and row[0] == "CNAME" for value in [row[1]]]
    if cname:
        if depth >= 8:  # a CNAME loop: what a recursive resolver reports as SERVFAIL
            raise _Timeout
        return _answer(zone, cname[0], qtype, depth + 1)
    seen = False
    answer: list[Any] = []
    for row in rows:
        if row == "TIMEOUT":
            if not seen:
                raise _Timeout
            return answer
        rtype, value = row
        if rtype == qtype:
            seen = True
            answer.append(value)
    return answer


def _resolver(zonedata: dict[str, list[Any]]) -> FakeResolver:
    zone = {name.rstrip(".").lower(): _driver_rows(records) for name, records in zonedata.items()}
    fake_zone: dict[str, dict[str, list[Any]]] = {}
    failing: list[tuple[str, str]] = []
    for name in zone:
        owner = name
        if name.endswith((".in-addr.arpa", ".ip6.arpa")):  # FakeResolver keys PTR records by address
            owner = str(ipaddress.ip_address(dns.reversename.to_address(dns.name.from_text(name))))
        for qtype in QUERY_TYPES:
            try:
                values = _answer(zone, name, qtype)
            except _Timeout:
                failing.append((owner, qtype))
                continue
            if values:
                fake_zone.setdefault(owner, {})[qtype] = values
    return FakeResolver(fake_zone, servfail_types=failing)


def _load() -> list[Case]:
    cases: list[Case] = []
    with SUITE.open("rb") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, test in scenario["tests"].items():
                expected = test["result"]
                cases.append(
                    Case(
                        id=name,
                        scenario=scenario["description"],
                        host=str(test["host"]),
                        mailfrom=str(test["mailfrom"]),
                        helo=str(test["helo"]),
                        results=tuple(expected) if isinstance(expected, list) else (expected,),
                        explanation=test.get("explanation"),
                        zonedata=scenario.get("zonedata") or {},
                    )
                )
    return cases


CASES = _load()


async def _run(case: Case) -> str | None:
    """None when the case passes, else what went wrong."""
    got = await spf.check_mail_from(
        _resolver(case.zonedata), case.host, case.mailfrom, case.helo, default_explanation="DEFAULT"
    )
    if got.result not in case.results:
        return f"{case.id} ({case.scenario}): expected {'/'.join(case.results)}, got {got.result}: {got.reason}"
    if case.explanation is not None and got.explanation != case.explanation:
        return f"{case.id} ({case.scenario}): explanation {got.explanation!r} != {case.explanation!r}"
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_rfc7208_suite_case(case: Case) -> None:
    failure = await _run(case)
    assert failure is None, failure


async def test_rfc7208_suite_passes_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    failures = [failure for case in CASES if (failure := await _run(case)) is not None]
    with capsys.disabled():
        print(f"\nSPF suite: {len(CASES) - len(failures)}/{len(CASES)} cases of {SUITE.name} pass")
    assert len(CASES) >= 200, "the RFC 7208 suite was not loaded in full"
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# Macro expansion: the examples of RFC 7208 §7.4

RFC_SENDER = "strong-bad@email.example.com"


@pytest.mark.parametrize(
    "macro, expansion",
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%%%_%-", "% %20"),
        ("%{L}", "strong-bad"),
        ("%{S}", "strong-bad%40email.example.com"),
    ],
)
async def test_macro_expansion_rfc7208_section_7_4(macro: str, expansion: str) -> None:
    check = spf._Check(FakeResolver(), "192.0.2.3", RFC_SENDER, "mx.example.org", "unknown", None)
    parts, _ = spf._macro_string(macro, spf._EXP_LETTERS)
    assert await check.expand(parts, "email.example.com") == expansion


async def test_ipv6_i_macro_is_dotted_nibbles() -> None:
    check = spf._Check(FakeResolver(), "2001:db8::cb01", RFC_SENDER, "mx.example.org", "unknown", None)
    parts, _ = spf._macro_string("%{ir}.%{v}._spf.%{d2}", spf._DOMAIN_LETTERS)
    expanded = await check.expand(parts, "email.example.com")
    # RFC 7208 §7.4 prints the nibbles in lower case, the test suite in upper case: DNS does not care.
    assert expanded.lower() == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"


async def test_explanation_only_macros_and_time_are_expanded() -> None:
    check = spf._Check(FakeResolver(), "::ffff:192.0.2.3", RFC_SENDER, "helo.example.org", "mx.agents.test", 1234.9)
    parts, _ = spf._macro_string("%{c} %{r} %{t} %{v}", spf._EXP_LETTERS)
    assert await check.expand(parts, "email.example.com") == "192.0.2.3 mx.agents.test 1234 in-addr"


@pytest.mark.parametrize("text", ["%{c}.example.com", "%{r}.example.com", "%{t}.example.com", "%{a}.example.com"])
def test_explanation_only_and_unknown_macro_letters_are_rejected_in_domain_specs(text: str) -> None:
    with pytest.raises(spf.SpfSyntaxError):
        spf._domain_spec(text)


@pytest.mark.parametrize("text", ["%", "%x", "%{d", "%{d0}", "a%(d)", "foo%.example.com"])
def test_malformed_macros_are_syntax_errors(text: str) -> None:
    with pytest.raises(spf.SpfSyntaxError):
        spf._macro_string(text, spf._EXP_LETTERS)


# ---------------------------------------------------------------------------------------------
# Record parsing


def test_record_parses_into_terms() -> None:
    record = spf.parse_record("V=SPF1 ip4:192.0.2.0/24 ~A:mail.example.com/28//64 -MX ?ptr exists:%{i}.x.test -all")
    assert [(m.qualifier, m.kind) for m in record.mechanisms] == [
        ("pass", "ip4"),
        ("softfail", "a"),
        ("fail", "mx"),
        ("neutral", "ptr"),
        ("pass", "exists"),
        ("fail", "all"),
    ]
    a = record.mechanisms[1]
    assert (a.cidr4, a.cidr6, a.domain) == (28, 64, ("mail.example.com",))
    assert record.mechanisms[0].network == int(ipaddress.IPv4Address("192.0.2.0"))
    assert record.redirect is None and record.exp is None


def test_modifiers_and_unknown_modifiers() -> None:
    record = spf.parse_record("v=spf1 foo.bar-baz_1=anything:%{d} redirect=_spf.example.com exp=why.%{d}")
    assert record.mechanisms == ()
    assert record.redirect == ("_spf.example.com",)
    assert record.exp is not None and record.exp[0] == "why."


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 ip4:192.0.2.1 -all moo",  # unknown mechanism, even after a match (§4.6)
        "v=spf1 redirect=a.test redirect=b.test",
        "v=spf1 exp=a.test exp=b.test",
        "v=spf1 ip4:192.0.2.1/33",
        "v=spf1 ip4:192.0.2.1/032",
        "v=spf1 ip4:192.0.2",
        "v=spf1 ip4:192.0.2.001",
        "v=spf1 ip6:fe80::1%eth0",
        "v=spf1 ip6:::1/129",
        "v=spf1 a/24/64",
        "v=spf1 a:museum",
        "v=spf1 a:111.222.33.44",
        "v=spf1 include:",
        "v=spf1 include",
        "v=spf1 exists",
        "v=spf1 -all.",
        "v=spf1 ptr/24",
        "v=spf1 =all",
        "v=spf1 1up=foo",
        "v=spf1 a:example.com\tptr",
        "v=spf1 a:exämple.com",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(spf.SpfSyntaxError):
        spf.parse_record(text)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("example.com.", "example.com"),
        ("a..example.com", None),
        ("x" * 64 + ".example.com", None),
        ("a." * 130 + "example.com", ("a." * 130 + "example.com")[-253:].lstrip(".")),  # §7.3: left labels go
    ],
)
def test_query_names(name: str, expected: str | None) -> None:
    result = spf._dns_name(name)
    assert result == expected
    assert result is None or len(result) <= 253


# ---------------------------------------------------------------------------------------------
# Behaviour beyond the suite

ZONE: dict[str, dict[str, list[Any]]] = {
    "agents.test": {"TXT": ["v=spf1 a mx -all"], "A": ["127.0.0.2"], "AAAA": ["::1"], "MX": [(10, "mx.agents.test")]},
    "mx.agents.test": {"A": ["127.0.0.3"]},
    "helo.agents.test": {"TXT": ["v=spf1 ip4:127.0.0.4 -all"], "A": ["127.0.0.4"]},
    "broken6.test": {"TXT": ["v=spf1 a -all"], "A": ["127.0.0.5"]},
}


async def test_pass_fail_and_the_counted_lookups() -> None:
    resolver = FakeResolver(ZONE)
    passed = await spf.check_mail_from(resolver, "127.0.0.3", "agent@agents.test", "helo.agents.test")
    assert (passed.result, passed.mechanism, passed.lookups, passed.domain) == ("pass", "mx", 2, "agents.test")
    failed = await spf.check_mail_from(resolver, "127.0.0.9", "agent@Agents.Test.", "helo.agents.test")
    assert (failed.result, failed.mechanism, failed.explanation) == ("fail", "-all", spf.DEFAULT_EXPLANATION)


async def test_null_reverse_path_checks_postmaster_at_helo() -> None:
    resolver = FakeResolver(ZONE)
    result = await spf.check_mail_from(resolver, "127.0.0.4", "", "helo.agents.test")
    assert (result.result, result.domain) == ("pass", "helo.agents.test")
    assert (await spf.check_helo(resolver, "127.0.0.9", "helo.agents.test")).result == "fail"
    assert (await spf.check_helo(resolver, "127.0.0.4", "[127.0.0.4]")).result == "none"


async def test_only_the_client_family_is_queried() -> None:
    # An AAAA lookup that fails does not matter to an IPv4 client (RFC 7208 §5).
    resolver = FakeResolver(ZONE, servfail_types=[("broken6.test", "AAAA")])
    assert (await spf.check_mail_from(resolver, "127.0.0.5", "a@broken6.test", "h.test")).result == "pass"
    assert ("broken6.test", "AAAA") not in resolver.queries
    assert (await spf.check_mail_from(resolver, "::5", "a@broken6.test", "h.test")).result == "temperror"


class _PlainResolver:
    """A Resolver with only the four base lookups: SPF filters a() by family."""

    def __init__(self, fake: FakeResolver) -> None:
        self.fake = fake

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        return await self.fake.mx(domain)

    async def a(self, host: str) -> list[str]:
        return await self.fake.a(host)

    async def txt(self, name: str) -> list[str]:
        return await self.fake.txt(name)

    async def ptr(self, ip: str) -> list[str]:
        return await self.fake.ptr(ip)


async def test_a_resolver_without_family_lookups_still_works() -> None:
    resolver: Resolver = _PlainResolver(FakeResolver(ZONE))
    assert (await spf.check_mail_from(resolver, "127.0.0.2", "a@agents.test", "h.test")).result == "pass"
    assert (await spf.check_mail_from(resolver, "::1", "a@agents.test", "h.test")).result == "pass"
    assert (await spf.check_mail_from(resolver, "::2", "a@agents.test", "h.test")).result == "fail"


async def test_slow_dns_is_temperror_after_the_time_limit() -> None:
    class Slow(FakeResolver):
        async def txt(self, name: str) -> list[str]:
            import asyncio

            await asyncio.sleep(5)
            return []

    result = await spf.check_mail_from(Slow(ZONE), "127.0.0.2", "a@agents.test", "h.test", time_limit=0.05)
    assert result.result == "temperror"


async def test_explanation_is_bounded() -> None:
    zone = {
        "long.test": {"TXT": ["v=spf1 -all exp=why.long.test"]},
        "why.long.test": {"TXT": ["%{s} " * 2000]},
    }
    result = await spf.check_mail_from(FakeResolver(zone), "127.0.0.2", "x" * 60 + "@long.test", "h.test")
    assert result.result == "fail"
    assert result.explanation is not None and 0 < len(result.explanation) <= spf.MAX_EXPLANATION


async def test_records_are_parsed_once() -> None:
    spf._parse_cached.cache_clear()
    resolver = FakeResolver(ZONE)
    for _ in range(5):
        await spf.check_mail_from(resolver, "127.0.0.2", "a@agents.test", "h.test")
    assert spf._parse_cached.cache_info().misses == 1


# ---------------------------------------------------------------------------------------------
# The same checks over real DNS (dnslib on loopback, dnspython), family lookups included


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as server:
        yield server


async def test_over_real_dns(dns_server: DnsServer) -> None:
    resolver = DnspythonResolver([dns_server.address], timeout=1.0, lifetime=3.0)
    assert await resolver.ipv4("agents.test") == ["127.0.0.2"]
    assert await resolver.ipv6("agents.test") == ["::1"]
    assert await resolver.ipv6("mx.agents.test") == []
    assert (await spf.check_mail_from(resolver, "127.0.0.3", "a@agents.test", "h.test")).result == "pass"
    assert (await spf.check_mail_from(resolver, "::1", "a@agents.test", "h.test")).result == "pass"
    assert (await spf.check_mail_from(resolver, "127.0.0.9", "a@agents.test", "h.test")).result == "fail"
    assert (await spf.check_mail_from(resolver, "127.0.0.9", "a@nowhere.test", "h.test")).result == "none"
