"""POST /v0/domains/{id}/verify, the zone file and the MTA-STS policy, on a real server and a real DNS server (NSD)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from nsdserver import NsdServer, available
from serverproc import AgentpostServer

pytestmark = pytest.mark.skipif(not available(), reason="NSD (/usr/sbin/nsd) is not installed")

DOMAIN = "verify.example.test"


@pytest.fixture
def dns_and_server(tmp_path: Path) -> Iterator[tuple[NsdServer, AgentpostServer]]:
    with NsdServer(tmp_path / "nsd", {"test": ""}) as nsd:
        srv = AgentpostServer(
            tmp_path / "data",
            extra_env={"AGENTPOST_DNS_SERVERS": nsd.address, "AGENTPOST_OUTBOUND_SOURCE": "127.0.0.2"},
        )
        with srv.running():
            yield nsd, srv


def test_verify_through_the_api_updates_each_record_and_the_domain(
    dns_and_server: tuple[NsdServer, AgentpostServer],
) -> None:
    nsd, server = dns_and_server
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.http_url, headers=headers, timeout=30) as http:
        domain = http.post("/v0/domains", json={"domain": DOMAIN}).json()
        assert domain["status"] == "NOT_STARTED"
        zone = http.get(f"/v0/domains/{domain['domain_id']}/zone-file")
        assert zone.status_code == 200 and zone.headers["content-type"].startswith("text/plain")
        assert "p=quarantine" in zone.text  # the DMARC guidance travels with the zone file

        # Nothing published yet: every record MISSING, the domain PENDING.
        first = http.post(f"/v0/domains/{domain['domain_id']}/verify")
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "PENDING"
        statuses = {r["type"]: r["status"] for r in first.json()["records"] if r["type"] != "PTR"}
        assert set(statuses.values()) == {"MISSING"}
        # NSD serves no reverse zone: it refuses the PTR question, which is no answer at all.
        [ptr] = [r for r in first.json()["records"] if r["type"] == "PTR"]
        assert ptr["status"] == "UNKNOWN" and "try again" in ptr["reason"]

        # Publish what agentpost asked for, with the MX pointing elsewhere.
        wrong_mx = zone.text.replace("MX\t10 mx.agentpost.test.", "MX\t10 mx.elsewhere.test.")
        nsd.reload({"test": wrong_mx + "\nmx.agentpost.test. 300 IN A 127.0.0.2\n"})
        second = http.post(f"/v0/domains/{domain['domain_id']}/verify").json()
        records = {(r["type"], r["name"]): r for r in second["records"]}
        assert records[("MX", DOMAIN)]["status"] == "INVALID"
        assert "mx.elsewhere.test" in records[("MX", DOMAIN)]["reason"]
        assert records[("TXT", DOMAIN)]["status"] == "VALID"
        assert records[("TXT", f"_dmarc.{DOMAIN}")]["status"] == "VALID"
        assert second["status"] == "INVALID" and "MX" in second["reason"]

        nsd.reload({"test": zone.text + "\nmx.agentpost.test. 300 IN A 127.0.0.2\n"})
        third = http.post(f"/v0/domains/{domain['domain_id']}/verify").json()
        assert third["status"] == "VERIFIED", third
        assert http.get(f"/v0/domains/{domain['domain_id']}").json()["status"] == "VERIFIED"

        # The MTA-STS policy the _mta-sts record announces, served for mta-sts.<domain> only.
        policy = http.get("/.well-known/mta-sts.txt", headers={"Host": f"mta-sts.{DOMAIN}"})
        assert policy.status_code == 200 and policy.text.startswith("version: STSv1\r\n")
        assert "mx: mx.agentpost.test\r\n" in policy.text
        assert http.get("/.well-known/mta-sts.txt", headers={"Host": "mta-sts.nothosted.test"}).status_code == 404

    # The agentmail SDK's verify call works against agentpost.
    client = AgentMail(api_key=server.api_key, environment=AgentMailEnvironment(http=server.http_url, websockets=""))
    client.domains.verify(domain["domain_id"])
