"""`agentpost domain records` and `agentpost domain verify` against a real DNS server (NSD) on loopback.

The zone NSD serves is written from the records agentpost generated (`domain records --zone-file`),
with one record wrong (SPF authorising another address) and one missing (DMARC).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nsdserver import NsdServer, available
from serverproc import AgentpostServer

pytestmark = pytest.mark.skipif(not available(), reason="NSD (/usr/sbin/nsd) is not installed")

DOMAIN = "agents.example.test"
SOURCE = "127.0.0.2"  # outbound.source: the address SPF must authorise


def _status_lines(output: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(type, name) -> (status, reason) from `domain verify`'s "  STATUS TYPE NAME  reason" lines."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^  (VALID|INVALID|MISSING|UNKNOWN)\s+(\S+)\s+(\S+)\s+(.*)$", line)
        if match:
            status, rtype, name, reason = match.groups()
            found[(rtype, name)] = (status, reason)
    return found


def _zones(published: str, *, spf: str | None, dmarc: bool) -> dict[str, str]:
    """NSD serves all of "test" (so the DMARC tree walk up to "test" gets real answers), this server's
    address, and the reverse zone with the PTR record agentpost asked for."""
    lines = [f"mx.agentpost.test.\t3600\tIN\tA\t{SOURCE}"]
    reverse = []
    for line in published.splitlines():
        if "\tPTR\t" in line:
            reverse.append(line.removeprefix("; "))
            continue
        if line.startswith(";") or not line.strip():
            continue
        if f"_dmarc.{DOMAIN}." in line and not dmarc:
            continue
        if "v=spf1" in line and spf is not None:
            line = f'{DOMAIN}.\t3600\tIN\tTXT\t"{spf}"'
        lines.append(line)
    return {"test": "\n".join(lines), "127.in-addr.arpa": "\n".join(reverse)}


def test_domain_verify_reports_a_wrong_and_a_missing_record_then_verifies(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data", extra_env={"AGENTPOST_OUTBOUND_SOURCE": SOURCE})
    server.setup()
    server.cli("domain", "add", DOMAIN)

    shown = server.cli("domain", "records", DOMAIN).stdout
    assert "not checked yet" not in shown  # the table shows type/name/value/status
    assert "MISSING" in shown and "_mta-sts." in shown and "_smtp._tls." in shown
    published = server.cli("domain", "records", "--zone-file", DOMAIN).stdout
    assert f"ip4:{SOURCE} -all" in published and "p=none; rua=mailto:dmarc-reports@" in published
    assert "pct=" not in published
    assert re.search(r"; .*in-addr\.arpa\.\t3600\tIN\tPTR\tmx\.agentpost\.test\.", published)

    broken = _zones(published, spf="v=spf1 ip4:192.0.2.10 -all", dmarc=False)
    with NsdServer(tmp_path / "nsd", broken) as nsd:
        server.env["AGENTPOST_DNS_SERVERS"] = nsd.address
        result = server.cli("domain", "verify", DOMAIN, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        statuses = _status_lines(result.stdout)
        assert f"domain {DOMAIN}: PENDING" not in result.stdout  # a wrong record makes it INVALID
        assert f"domain {DOMAIN}: INVALID" in result.stdout
        assert statuses[("MX", DOMAIN)][0] == "VALID"
        spf_status, spf_reason = statuses[("TXT", DOMAIN)]
        assert spf_status == "INVALID" and f"{SOURCE} is not authorised" in spf_reason
        assert statuses[("TXT", f"_dmarc.{DOMAIN}")][0] == "MISSING"
        dkim = [status for (rtype, name), (status, _) in statuses.items() if "._domainkey." in name]
        assert dkim == ["VALID", "VALID"]  # RSA-2048 and Ed25519, the RSA one split in 255-octet strings
        assert statuses[("TXT", f"_mta-sts.{DOMAIN}")][0] == "VALID"
        assert statuses[("TXT", f"_smtp._tls.{DOMAIN}")][0] == "VALID"
        assert statuses[("CNAME", f"mta-sts.{DOMAIN}")][0] == "VALID"
        assert statuses[("PTR", "2.0.0.127.in-addr.arpa")][0] == "VALID"
        assert "not verified:" in result.stdout

        nsd.reload(_zones(published, spf=None, dmarc=True))
        fixed = server.cli("domain", "verify", DOMAIN, check=False)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert f"domain {DOMAIN}: VERIFIED" in fixed.stdout
        statuses = _status_lines(fixed.stdout)
        assert statuses[("TXT", DOMAIN)][0] == "VALID"
        assert statuses[("TXT", f"_dmarc.{DOMAIN}")][0] == "VALID"

    # The last check is kept: `domain records` shows it without asking DNS again.
    after = server.cli("domain", "records", DOMAIN).stdout
    assert "VERIFIED" in after and "VALID" in after


def test_domain_verify_when_dns_does_not_answer_says_unknown_never_valid(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data", extra_env={"AGENTPOST_DNS_TIMEOUT": "0.3"})
    server.setup()
    server.cli("domain", "add", DOMAIN)
    result = server.cli("domain", "verify", DOMAIN, check=False)  # AGENTPOST_DNS_SERVERS=127.0.0.1:9: nobody
    assert result.returncode == 1
    statuses = _status_lines(result.stdout)
    assert statuses and {status for status, _ in statuses.values()} == {"UNKNOWN"}
    assert f"domain {DOMAIN}: PENDING" in result.stdout
