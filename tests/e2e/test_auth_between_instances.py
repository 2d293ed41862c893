"""Sender authentication between two real instances through a real DNS server (NSD on loopback).

Instance A (MX and outbound source 127.0.0.2) hosts alpha.example.test; instance B (127.0.0.3) hosts
beta.example.test and checks every peer (no trusted networks). NSD serves all of "test" from the
records A generated (its zone file) plus the MX and address records that lead A to B. A sends to B
through the API: B must record SPF pass, DKIM pass for both signatures (RSA and Ed25519) and DMARC
pass. Then a forger at 127.0.0.9 puts A's domain in From: under A's generated `p=none` the message
is stored as unauthenticated; with the zone rewritten to `p=reject` it is refused 550 5.7.1 at DATA.
"""

from __future__ import annotations

import re
import smtplib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from mailclient import setup_inbox
from nsdserver import NsdServer, available
from serverproc import AgentpostServer, free_port

pytestmark = pytest.mark.skipif(not available(), reason="NSD (/usr/sbin/nsd) is not installed")

A_IP, B_IP, FORGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.9"
A_DOMAIN, B_DOMAIN = "alpha.example.test", "beta.example.test"
A_HOST, B_HOST = f"mx.{A_DOMAIN}", f"mx.{B_DOMAIN}"
SENDER, RECIPIENT = f"agent@{A_DOMAIN}", f"agent@{B_DOMAIN}"


def zones(published: str, *, dmarc_policy: str = "none") -> dict[str, str]:
    """The "test" zone: A's generated records (DMARC policy rewritten if asked), the hosts' addresses,
    B's MX; and the reverse zone with the PTR record A asked for."""
    lines = [
        f"{A_HOST}.\t3600\tIN\tA\t{A_IP}",
        f"{B_HOST}.\t3600\tIN\tA\t{B_IP}",
        f"{B_DOMAIN}.\t3600\tIN\tMX\t10 {B_HOST}.",
    ]
    reverse = []
    for line in published.splitlines():
        if "\tPTR\t" in line:
            reverse.append(line.removeprefix("; "))
        elif line.strip() and not line.startswith(";"):
            if f"_dmarc.{A_DOMAIN}." in line:
                assert "p=none;" in line, line  # what agentpost generates
                line = line.replace("p=none;", f"p={dmarc_policy};")
            lines.append(line)
    return {"test": "\n".join(lines), "127.in-addr.arpa": "\n".join(reverse)}


@dataclass
class Lab:
    a: AgentpostServer
    b: AgentpostServer
    nsd: NsdServer
    published: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("auth-between")
    port = free_port(A_IP)  # both MXs on one port: outbound.port applies to every MX host

    def instance(name: str, ip: str, hostname: str, env: dict[str, str]) -> AgentpostServer:
        url = str(postgres.create_database(name + uuid.uuid4().hex[:12])) if postgres is not None else ""
        server = AgentpostServer(
            root / name,
            database_url=url,
            mx_host=ip,
            mx_port=port,
            extra_env={
                "AGENTPOST_HOSTNAME": hostname,
                "AGENTPOST_MX_PROCESSES": "1",
                "AGENTPOST_DNS_TIMEOUT": "3",
                "AGENTPOST_OUTBOUND_PORT": str(port),
                **env,
            },
        )
        server.setup()
        return server

    a = instance("a", A_IP, A_HOST, {"AGENTPOST_OUTBOUND_SOURCE": A_IP})
    b = instance("b", B_IP, B_HOST, {"AGENTPOST_MX_TRUSTED_NETWORKS": ""})  # check loopback peers too
    a.cli("domain", "add", A_DOMAIN)
    published = a.cli("domain", "records", "--zone-file", A_DOMAIN).stdout
    assert f"ip4:{A_IP} -all" in published  # SPF authorises A's outbound source

    with NsdServer(root / "nsd", zones(published)) as nsd:
        for server in (a, b):
            server.env["AGENTPOST_DNS_SERVERS"] = nsd.address
        try:
            a.start()
            b.start()
            with a.client() as http:
                setup_inbox(http, SENDER)
            with b.client() as http:
                setup_inbox(http, RECIPIENT)
            yield Lab(a, b, nsd, published)
        finally:
            a.stop()
            b.stop()


def find(http: httpx.Client, subject: str, **params: Any) -> dict[str, Any] | None:
    response = http.get(f"/v0/inboxes/{RECIPIENT}/messages", params={"limit": 100, **params})
    response.raise_for_status()
    for item in response.json()["messages"]:
        if item.get("subject") == subject:
            return dict(item)
    return None


def wait_find(http: httpx.Client, subject: str, sender: AgentpostServer | None = None, **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (listed := find(http, subject, **params)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r} never arrived" + (f":\n{sender.log()[-3000:]}" if sender else ""))
        time.sleep(0.2)
    return listed


def forge(b: AgentpostServer, subject: str) -> tuple[int, str]:
    """SMTP to B from 127.0.0.9, an address A's SPF does not authorise, with A's domain in From."""
    raw = (
        f"From: Alpha Agent <{SENDER}>\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{A_DOMAIN}>\r\n"
        f"\r\n"
        f"Not really from {A_DOMAIN}.\r\n"
    ).encode()
    with smtplib.SMTP(b.mx_host, b.mx_port, timeout=30, source_address=(FORGER_IP, 0)) as client:
        client.ehlo("forger.example.test")
        client.mail(SENDER)
        assert client.rcpt(RECIPIENT)[0] == 250
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, exc.smtp_error
    return code, reply.decode()


def test_mail_from_a_to_b_passes_spf_both_dkim_signatures_and_dmarc(lab: Lab) -> None:
    with lab.a.client() as http:
        response = http.post(
            f"/v0/inboxes/{SENDER}/messages/send",
            json={"to": [RECIPIENT], "subject": "hello from A", "text": "Signed by A, checked by B."},
        )
        assert response.status_code == 200, response.text
    with lab.b.client() as http:
        listed = wait_find(http, "hello from A", lab.a, include_unauthenticated="true")
        assert "unauthenticated" not in listed["labels"]
        full = http.get(f"/v0/inboxes/{RECIPIENT}/messages/{listed['message_id']}").json()
        link = http.get(f"/v0/inboxes/{RECIPIENT}/messages/{listed['message_id']}/raw").json()["download_url"]
        stored = httpx.get(link, timeout=10).content

    auth = full["auth"]
    print("B's auth for A's message:", auth)
    assert auth["verdict"] == "pass", auth
    assert auth["spf"]["result"] == "pass" and auth["spf"]["domain"] == A_DOMAIN, auth["spf"]
    dkim = auth["dkim"]
    assert [(d["result"], d["domain"]) for d in dkim] == [("pass", A_DOMAIN)] * 2, dkim
    algorithms = {d["algorithm"] for d in dkim}
    assert algorithms == {"rsa-sha256", "ed25519-sha256"}, dkim
    assert auth["dmarc"]["result"] == "pass" and auth["dmarc"]["policy"] == "none", auth["dmarc"]

    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    results = [h for h in re.split(r"\r\n(?=\S)", head) if h.lower().startswith("authentication-results:")]
    assert len(results) == 1, head
    ours = results[0]
    assert ours.split(":", 1)[1].strip().startswith(f"{B_HOST};"), ours
    for part in ("spf=pass", "dmarc=pass", f"header.from={A_DOMAIN}"):
        assert part in ours, ours
    print(ours)
    assert ours.count("dkim=pass") == 2, ours
    assert head.count("\r\nDKIM-Signature:") + head.startswith("DKIM-Signature:") == 2, head


def test_forged_from_under_generated_p_none_is_stored_unauthenticated(lab: Lab) -> None:
    code, reply = forge(lab.b, "forged under p=none")
    assert code == 250, reply
    with lab.b.client() as http:
        listed = wait_find(http, "forged under p=none", include_unauthenticated="true")
        assert "unauthenticated" in listed["labels"]
        assert find(http, "forged under p=none") is None  # hidden from the default listing
        full = http.get(f"/v0/inboxes/{RECIPIENT}/messages/{listed['message_id']}").json()
    auth = full["auth"]
    assert auth["verdict"] == "unauthenticated", auth
    assert auth["spf"]["result"] == "fail" and auth["dkim"] == [], auth
    assert auth["dmarc"]["result"] == "fail" and auth["dmarc"]["policy"] == "none", auth["dmarc"]


def test_forged_from_once_a_publishes_p_reject_is_refused_550_5_7_1(lab: Lab) -> None:
    lab.nsd.reload(zones(lab.published, dmarc_policy="reject"))
    # B keeps DNS answers for 60 s; a restart starts it with an empty cache instead of waiting.
    lab.b.stop()
    lab.b.start()
    code, reply = forge(lab.b, "forged under p=reject")
    assert code == 550 and reply.startswith("5.7.1"), (code, reply)
    with lab.b.client() as http:
        assert find(http, "forged under p=reject", include_unauthenticated="true", include_spam="true") is None
