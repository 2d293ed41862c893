"""Checking published DNS records (service/dnscheck.py): status and reason of each, table-tested on a fake zone."""

from __future__ import annotations

from typing import Any

import pytest

from agentpost.net.dns import FakeResolver
from agentpost.service import dnscheck
from agentpost.service.dnscheck import DnsSetup, Expected, Finding

DOMAIN = "agents.example.test"
HOST = "mx.agentpost.test"
SETUP = DnsSetup(hostname=HOST, source="192.0.2.10")
DKIM_TXT = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
RECORDS = {r.kind: r for r in dnscheck.expected(DOMAIN, [("ap1e", DKIM_TXT)], SETUP)}
GOOD: dict[str, dict[str, list[Any]]] = {
    DOMAIN: {"MX": [(10, HOST)], "TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
    f"ap1e._domainkey.{DOMAIN}": {"TXT": [["v=DKIM1; k=ed25519; ", "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]]},
    f"_dmarc.{DOMAIN}": {"TXT": [f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}"]},
    HOST: {"A": ["192.0.2.10"]},
    "192.0.2.10": {"PTR": [HOST]},
}


def _zone(**changes: dict[str, list[Any]] | None) -> dict[str, dict[str, list[Any]]]:
    zone = {name: dict(records) for name, records in GOOD.items()}
    for key, records in changes.items():
        name = {"apex": DOMAIN, "dkim": f"ap1e._domainkey.{DOMAIN}", "dmarc": f"_dmarc.{DOMAIN}"}.get(key, key)
        if records is None:
            zone.pop(name, None)
        else:
            zone[name] = {**zone.get(name, {}), **records}
    return zone


async def _check(kind: str, zone: dict[str, dict[str, list[Any]]], **fake: Any) -> Finding:
    [finding] = await dnscheck.check(FakeResolver(zone, **fake), DOMAIN, [RECORDS[kind]], SETUP)
    return finding


def test_expected_records_follow_the_setup() -> None:
    assert RECORDS["spf"].value == "v=spf1 ip4:192.0.2.10 -all"
    assert RECORDS["dmarc"].value == f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}"
    assert RECORDS["mx"].value == HOST and RECORDS["mx"].priority == 10
    assert RECORDS["ptr"].name == "10.2.0.192.in-addr.arpa" and RECORDS["ptr"].value == HOST
    assert RECORDS["tls_rpt"].value == f"v=TLSRPTv1; rua=mailto:tls-reports@{DOMAIN}"
    assert RECORDS["mta_sts"].value.startswith("v=STSv1; id=")
    assert "bimi" not in RECORDS
    bare = {
        r.kind: r for r in dnscheck.expected(DOMAIN, [], DnsSetup(HOST, spf_all="~all", bimi_logo="https://l/x.svg"))
    }
    assert bare["spf"].value == f"v=spf1 a:{HOST} ~all" and "ptr" not in bare
    assert bare["bimi"].value == "v=BIMI1; l=https://l/x.svg"


@pytest.mark.parametrize(
    "kind, changes, status, reason",
    [
        ("mx", {}, "VALID", f"MX 10 {HOST}"),
        ("mx", {"apex": {"MX": []}}, "MISSING", "no MX record"),
        ("mx", {"apex": {"MX": [(10, "mx.elsewhere.test")]}}, "INVALID", "not mx.agentpost.test"),
        ("mx", {"apex": {"MX": [(0, ".")]}}, "INVALID", "null MX"),
        ("mx", {"apex": {"MX": [(5, "mx.elsewhere.test"), (10, HOST)]}}, "VALID", "come first"),
        ("spf", {}, "VALID", "ends in -all"),
        ("spf", {"apex": {"TXT": []}}, "MISSING", "no v=spf1"),
        ("spf", {"apex": {"TXT": ["v=spf1 ip4:192.0.2.99 -all"]}}, "INVALID", "192.0.2.10 is not authorised"),
        ("spf", {"apex": {"TXT": ["v=spf1 -all", "v=spf1 ip4:192.0.2.10 -all"]}}, "INVALID", "2 v=spf1 records"),
        ("spf", {"apex": {"TXT": ["v=spf1 ip4:192.0.2.10 ~all"]}}, "VALID", "~all"),
        ("spf", {"apex": {"TXT": ["v=spf1 ip4:192.0.2.10 ?all"]}}, "INVALID", "does not refuse other senders"),
        ("spf", {"apex": {"TXT": ["v=spf1 ip4:192.0.2.10"]}}, "INVALID", "does not refuse other senders"),
        ("spf", {"apex": {"TXT": ["v=spf1 ip4:192.0.2.10 bogus:x -all"]}}, "INVALID", "does not parse"),
        (
            "spf",
            {"apex": {"TXT": ["v=spf1 ip4:192.0.2.10 " + " ".join(f"a:h{i}.test" for i in range(11)) + " -all"]}},
            "INVALID",
            "broken",
        ),
        ("dkim", {}, "VALID", "matches"),
        ("dkim", {"dkim": None}, "MISSING", "no TXT record"),
        ("dkim", {"dkim": {"TXT": ["v=DKIM1; k=ed25519; p=AAAA"]}}, "INVALID", "not this selector's public key"),
        ("dkim", {"dkim": {"TXT": ["v=DKIM1; p="]}}, "INVALID", "revoked"),
        ("dmarc", {}, "VALID", "p=none"),
        ("dmarc", {"dmarc": None}, "MISSING", "no DMARC record"),
        ("dmarc", {"dmarc": {"TXT": ["v=DMARC1; p=bogus"]}}, "INVALID", "invalid"),
        ("dmarc", {"dmarc": {"TXT": ["v=DMARC1; rua=mailto:x@y.test"]}}, "INVALID", "no p= tag"),
        ("dmarc", {"dmarc": {"TXT": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]}}, "INVALID", "2 DMARC records"),
        ("dmarc", {"dmarc": {"TXT": ["v=DMARC1; p=reject; pct=50"]}}, "VALID", "pct= is gone"),
        ("dmarc", {"dmarc": {"TXT": ["v=DMARC1; p=quarantine"]}}, "VALID", "this server sees no aggregate reports"),
        (
            "dmarc",
            {"dmarc": None, "_dmarc.example.test": {"TXT": ["v=DMARC1; p=reject"]}},
            "VALID",
            "_dmarc.example.test covers it (policy reject)",
        ),
        ("ptr", {}, "VALID", "forward-confirmed"),
        ("ptr", {"192.0.2.10": None}, "MISSING", "no PTR"),
        ("ptr", {"192.0.2.10": {"PTR": ["host.isp.test"]}}, "INVALID", "not at the EHLO name"),
        ("ptr", {HOST: {"A": ["192.0.2.11"]}}, "INVALID", "does not resolve back"),
    ],
)
async def test_record_status_and_reason(kind: str, changes: dict[str, Any], status: str, reason: str) -> None:
    finding = await _check(kind, _zone(**changes))
    assert finding.status == status, finding.reason
    assert reason in finding.reason


@pytest.mark.parametrize("kind", ["mx", "spf", "dkim", "dmarc", "mta_sts", "tls_rpt", "ptr"])
async def test_a_failed_lookup_is_unknown_never_valid(kind: str) -> None:
    names = [DOMAIN, f"ap1e._domainkey.{DOMAIN}", f"_dmarc.{DOMAIN}", f"_mta-sts.{DOMAIN}", f"_smtp._tls.{DOMAIN}"]
    finding = await _check(kind, _zone(), servfail=[*names, "192.0.2.10", HOST])
    assert finding.status == "UNKNOWN" and "try again" in finding.reason


async def test_spf_with_a_servfail_inside_an_include_is_unknown() -> None:
    zone = _zone(apex={"TXT": ["v=spf1 include:_spf.broken.test ip4:192.0.2.10 -all"]})
    finding = await _check("spf", zone, servfail=["_spf.broken.test"])
    assert finding.status == "UNKNOWN"


def _findings(**statuses: str) -> tuple[list[Expected], list[Finding]]:
    records = [RECORDS[k] for k in ("mx", "spf", "dkim", "dmarc", "mta_sts")]
    return records, [Finding(statuses.get(r.kind, "VALID"), f"{r.kind} reason") for r in records]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "statuses, previous, expected",
    [
        ({}, "NOT_STARTED", "VERIFIED"),
        ({"mta_sts": "MISSING"}, "NOT_STARTED", "VERIFIED"),  # only MX, SPF, DKIM and DMARC decide
        ({"dmarc": "MISSING"}, "NOT_STARTED", "PENDING"),
        ({"dmarc": "MISSING", "spf": "INVALID"}, "PENDING", "INVALID"),
        ({"dmarc": "MISSING"}, "VERIFIED", "INVALID"),  # a verified domain whose records broke
        ({"spf": "UNKNOWN"}, "VERIFIED", "VERIFIED"),  # a failed lookup changes nothing
        ({"spf": "UNKNOWN"}, "NOT_STARTED", "PENDING"),
    ],
)
def test_domain_verdict(statuses: dict[str, str], previous: str, expected: str) -> None:
    records, findings = _findings(**statuses)
    status, reason = dnscheck.verdict(records, findings, previous)
    assert status == expected
    all_right = all(v == "VALID" for k, v in statuses.items() if k in dnscheck.REQUIRED)
    assert (reason is None) == all_right  # otherwise the reason names what is wrong or unknown
