"""Sender authentication at the MX, for real: a `serve` process, a DNS server on loopback, SMTP from 127.0.0.1.

The zone authorises 127.0.0.1 for the aligned domain and nobody for the forged ones; loopback is
taken out of ``[mx] trusted_networks`` so that this loopback client is checked like a remote MTA.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentpost.mailauth.dkim import RSA_SHA256, DkimKey, DkimSigner, generate_key
from dnsserver import DnsServer
from mailclient import setup_inbox, smtp, wait_list
from serverproc import AgentpostServer, authenticating_server

INBOX = "agent@auth.example.test"


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return generate_key("good.example", "sel1", RSA_SHA256)


@pytest.fixture(scope="module")
def dns(key: DkimKey) -> Iterator[DnsServer]:
    zone = {
        "good.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.good.example": {"TXT": ["v=DMARC1; p=reject"]},
        key.dns_name: {"TXT": [key.dns_txt()]},
        "bank.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]},
        "lax.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.lax.example": {"TXT": ["v=DMARC1; p=none"]},
        "flaky.example": {"TXT": ["v=spf1 -all"]},
        "client.remote.test": {"A": ["127.0.0.1"]},
    }
    with DnsServer(zone, servfail={"_dmarc.flaky.example"}) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, postgres: Any) -> Iterator[AgentpostServer]:
    with authenticating_server(tmp_path_factory.mktemp("auth") / "data", dns.address, postgres) as srv:
        with srv.client() as http:
            setup_inbox(http, INBOX)
        yield srv


def message(from_addr: str, subject: str) -> bytes:
    return (
        f"From: Sender <{from_addr}>\r\n"
        f"To: {INBOX}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n"
        f"Authentication-Results: mx.agentpost.test; dmarc=pass header.from=bank.example\r\n"
        f"\r\n"
        f"Body of {subject}.\r\n"
    ).encode()


def send(server: AgentpostServer, mail_from: str, raw: bytes) -> tuple[int, str]:
    with smtp(server.mx_host, server.mx_port) as client:
        client.mail(mail_from)
        assert client.rcpt(INBOX)[0] == 250
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, exc.smtp_error
    return code, reply.decode()


def find(http: httpx.Client, subject: str, **params: Any) -> dict[str, Any] | None:
    response = http.get(f"/v0/inboxes/{INBOX}/messages", params={"limit": 100, **params})
    response.raise_for_status()
    for item in response.json()["messages"]:
        if item.get("subject") == subject:
            return dict(item)
    return None


def test_signed_aligned_mail_is_stored_with_auth_and_authentication_results(
    server: AgentpostServer, key: DkimKey
) -> None:
    raw = message("news@good.example", "aligned pass")
    signed = DkimSigner([key]).sign(raw) + raw
    code, reply = send(server, "bounces@good.example", signed)
    assert code == 250, reply
    with server.client() as http:
        wait_list(http, f"/v0/inboxes/{INBOX}/messages", "messages", 1)
        listed = find(http, "aligned pass")
        assert listed is not None and "unauthenticated" not in listed["labels"]
        full = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}").json()
        auth = full["auth"]
        assert auth["verdict"] == "pass"
        assert auth["spf"]["result"] == "pass" and auth["spf"]["domain"] == "good.example"
        assert [(d["result"], d["domain"]) for d in auth["dkim"]] == [("pass", "good.example")]
        assert auth["dmarc"]["result"] == "pass" and auth["dmarc"]["policy"] == "reject"
        assert auth["aligned"] == {"spf": "good.example", "dkim": ["good.example"]}
        link = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}/raw").json()["download_url"]
        stored = httpx.get(link, timeout=10).content
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("Return-Path: <bounces@good.example>\r\nReceived: from client.remote.test")
    ours = list(head.split("\r\nAuthentication-Results:")[1:])
    assert len(ours) == 1, head  # the forged one claiming our authserv-id is gone
    assert ours[0].startswith(" mx.agentpost.test;")
    for part in ("spf=pass", "smtp.mailfrom=good.example", "dkim=pass header.d=good.example", "dmarc=pass"):
        assert part in ours[0]
    assert "bank.example" not in head


def test_forged_from_of_a_p_reject_domain_is_refused_550_5_7_1_at_data(server: AgentpostServer) -> None:
    code, reply = send(server, "ceo@bank.example", message("ceo@bank.example", "forged reject"))
    assert code == 550 and reply.startswith("5.7.1"), reply
    with server.client() as http:
        assert find(http, "forged reject", include_unauthenticated="true", include_spam="true") is None


def test_forged_from_under_p_none_is_stored_unauthenticated_and_hidden_by_default(server: AgentpostServer) -> None:
    code, reply = send(server, "someone@lax.example", message("someone@lax.example", "forged none"))
    assert code == 250, reply
    with server.client() as http:
        wait_list(http, f"/v0/inboxes/{INBOX}/messages", "messages", 1, include_unauthenticated="true")
        assert find(http, "forged none") is None
        listed = find(http, "forged none", include_unauthenticated="true")
        assert listed is not None and "unauthenticated" in listed["labels"]
        full = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}").json()
        assert full["auth"]["verdict"] == "unauthenticated"
        assert full["auth"]["spf"]["result"] == "fail" and full["auth"]["dmarc"]["result"] == "fail"


def test_servfail_on_the_dmarc_lookup_defers_451(server: AgentpostServer) -> None:
    code, reply = send(server, "x@flaky.example", message("x@flaky.example", "flaky dns"))
    assert code == 451 and reply.startswith("4.7."), reply


def test_mail_between_hosted_inboxes_is_internal(server: AgentpostServer) -> None:
    with server.client() as http:
        setup_inbox(http, "peer@auth2.example.test")
        response = http.post(
            "/v0/inboxes/peer@auth2.example.test/messages/send",
            json={"to": [INBOX], "subject": "from a colleague", "text": "hi"},
        )
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 15
        while (listed := find(http, "from a colleague")) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listed is not None and "unauthenticated" not in listed["labels"]
        full = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}").json()
        assert full["auth"]["verdict"] == "internal" and full["auth"]["internal"] is True


def test_quickstart_defaults_trust_loopback(tmp_path: Path) -> None:
    """With the default trusted networks (and a dead DNS server), a loopback client is not checked."""
    srv = AgentpostServer(tmp_path / "data")
    srv.setup()
    srv.start()
    try:
        with srv.client() as http:
            setup_inbox(http, INBOX)
            code, reply = send(srv, "ceo@bank.example", message("ceo@bank.example", "local"))
            assert code == 250, reply
            listed = wait_list(http, f"/v0/inboxes/{INBOX}/messages", "messages", 1)[0]
            full = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}").json()
            assert full["auth"]["verdict"] == "internal"
    finally:
        srv.stop()
