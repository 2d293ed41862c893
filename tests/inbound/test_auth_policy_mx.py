"""Per-inbox auth_policy at the MX, for real: set over the API, applied at DATA to each recipient's copy.

A DNS server on loopback publishes bank.example (p=reject) and lax.example (p=none), neither
authorising 127.0.0.1; loopback is taken out of ``[mx] trusted_networks`` so the checks run.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dnsserver import DnsServer
from mailclient import smtp, wait_list
from serverproc import AgentpostServer, authenticating_server

DOMAIN = "policy.example.test"
STRICT = f"strict@{DOMAIN}"  # default policy
LENIENT = f"lenient@{DOMAIN}"  # dmarc_reject = quarantine
OPEN = f"open@{DOMAIN}"  # unauthenticated = accept


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[AgentpostServer]:
    zone = {
        "bank.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]},
        "lax.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.lax.example": {"TXT": ["v=DMARC1; p=none"]},
    }
    with (
        DnsServer(zone) as dns,
        authenticating_server(tmp_path_factory.mktemp("policy") / "data", dns.address, postgres) as srv,
    ):
        with srv.client() as http:
            http.post("/v0/domains", json={"domain": DOMAIN}).raise_for_status()
            for username, policy in (
                ("strict", None),
                ("lenient", {"dmarc_reject": "quarantine"}),
                ("open", {"unauthenticated": "accept"}),
            ):
                body: dict[str, Any] = {"username": username, "domain": DOMAIN}
                if policy is not None:
                    body["auth_policy"] = policy
                http.post("/v0/inboxes", json=body).raise_for_status()
        yield srv


def message(from_addr: str, subject: str) -> bytes:
    return (
        f"From: Sender <{from_addr}>\r\nTo: {STRICT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@test>\r\n\r\nBody of {subject}.\r\n"
    ).encode()


def send(server: AgentpostServer, mail_from: str, rcpts: list[str], raw: bytes) -> tuple[int, str]:
    with smtp(server.mx_host, server.mx_port) as client:
        client.mail(mail_from)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, error = exc.smtp_code, exc.smtp_error
            reply = error if isinstance(error, bytes) else error.encode()
    return code, reply.decode()


def find(http: httpx.Client, inbox: str, subject: str) -> dict[str, Any] | None:
    params = {"limit": 100, "include_spam": "true", "include_unauthenticated": "true"}
    response = http.get(f"/v0/inboxes/{inbox}/messages", params=params)
    response.raise_for_status()
    return next((dict(m) for m in response.json()["messages"] if m.get("subject") == subject), None)


def test_auth_policy_is_returned_with_defaults_and_patched_field_by_field(server: AgentpostServer) -> None:
    with server.client() as http:
        assert http.get(f"/v0/inboxes/{STRICT}").json()["auth_policy"] == {
            "dmarc_reject": "refuse",
            "unauthenticated": "label",
        }
        assert http.get(f"/v0/inboxes/{LENIENT}").json()["auth_policy"]["dmarc_reject"] == "quarantine"
        bad = http.patch(f"/v0/inboxes/{OPEN}", json={"auth_policy": {"dmarc_reject": "ignore"}})
        assert bad.status_code == 400  # a validation error, as for every request body
        patched = http.patch(f"/v0/inboxes/{OPEN}", json={"auth_policy": {"unauthenticated": "spam"}}).json()
        assert patched["auth_policy"] == {"dmarc_reject": "refuse", "unauthenticated": "spam"}
        restored = http.patch(f"/v0/inboxes/{OPEN}", json={"auth_policy": {"unauthenticated": "accept"}}).json()
        assert restored["auth_policy"] == {"dmarc_reject": "refuse", "unauthenticated": "accept"}


def test_p_reject_failure_is_refused_by_the_default_inbox_and_quarantined_by_a_lenient_one(
    server: AgentpostServer,
) -> None:
    code, reply = send(server, "ceo@bank.example", [STRICT], message("ceo@bank.example", "forged to strict"))
    assert code == 550 and reply.startswith("5.7.1"), reply
    code, reply = send(server, "ceo@bank.example", [LENIENT], message("ceo@bank.example", "forged to lenient"))
    assert code == 250, reply
    with server.client() as http:
        wait_list(
            http, f"/v0/inboxes/{LENIENT}/messages", "messages", 1, include_spam="true", include_unauthenticated="true"
        )
        stored = find(http, LENIENT, "forged to lenient")
        assert stored is not None and {"spam", "unauthenticated"} <= set(stored["labels"])
        assert find(http, STRICT, "forged to strict") is None


def test_recipients_that_disagree_get_one_250_and_only_the_accepting_inbox_stores(server: AgentpostServer) -> None:
    subject = "forged to both"
    code, reply = send(server, "ceo@bank.example", [STRICT, LENIENT], message("ceo@bank.example", subject))
    assert code == 250, reply
    with server.client() as http:
        wait_list(
            http, f"/v0/inboxes/{LENIENT}/messages", "messages", 2, include_spam="true", include_unauthenticated="true"
        )
        assert find(http, LENIENT, subject) is not None
        assert find(http, STRICT, subject) is None


def test_unauthenticated_accept_stores_without_the_label(server: AgentpostServer) -> None:
    subject = "lax sender"
    code, reply = send(server, "someone@lax.example", [OPEN, STRICT], message("someone@lax.example", subject))
    assert code == 250, reply
    with server.client() as http:
        listed = wait_list(http, f"/v0/inboxes/{OPEN}/messages", "messages", 1)  # the default listing shows it
        assert [m["subject"] for m in listed] == [subject]
        assert "unauthenticated" not in listed[0]["labels"]
        wait_list(http, f"/v0/inboxes/{STRICT}/messages", "messages", 1, include_unauthenticated="true")
        strict = find(http, STRICT, subject)
        assert strict is not None and "unauthenticated" in strict["labels"]
        full = http.get(f"/v0/inboxes/{OPEN}/messages/{listed[0]['message_id']}").json()
        assert full["auth"]["verdict"] == "unauthenticated" and full["auth"]["dmarc"]["result"] == "fail"
