"""ARC at the MX, for real: a forwarded message sealed by dkimpy reaches a `serve` process over SMTP.

A DNS server on loopback publishes the sealers' keys; loopback is taken out of ``[mx]
trusted_networks`` so the checks run, and ``forwarder.example`` is an ``arc_trusted_sealers`` entry.
The original sender publishes p=reject, and forwarding broke its SPF: only a trusted chain saves it.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import dkim  # type: ignore[import-untyped]  # dkimpy seals the chains
import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from agentpost.mailauth.dkim import RSA_SHA256, DkimKey, generate_key
from dnsserver import DnsServer
from mailclient import setup_inbox, smtp, wait_list
from serverproc import AgentpostServer, authenticating_server

INBOX = "agent@arc.example.test"
NOW = 1_767_225_600


@pytest.fixture(scope="module")
def keys() -> dict[str, DkimKey]:
    return {d: generate_key(d, "arc", RSA_SHA256) for d in ("forwarder.example", "stranger.example")}


@pytest.fixture(scope="module")
def dns(keys: dict[str, DkimKey]) -> Iterator[DnsServer]:
    zone: dict[str, dict[str, list[Any]]] = {
        "origin.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.origin.example": {"TXT": ["v=DMARC1; p=reject"]},
        "forwarder.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "stranger.example": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    }
    for key in keys.values():
        zone[key.dns_name] = {"TXT": [key.dns_txt()]}
    with DnsServer(zone) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, postgres: Any) -> Iterator[AgentpostServer]:
    trusted = {"AGENTPOST_MX_ARC_TRUSTED_SEALERS": "forwarder.example"}
    with authenticating_server(tmp_path_factory.mktemp("arc") / "data", dns.address, postgres, trusted) as srv:
        with srv.client() as http:
            setup_inbox(http, INBOX)
        yield srv


def forwarded(key: DkimKey, subject: str) -> bytes:
    """A message from origin.example, checked (dmarc=pass) and sealed by ``key``'s domain, ARC set on top."""
    original = (
        f"Authentication-Results: {key.domain}; spf=pass smtp.mailfrom=origin.example;"
        f" dmarc=pass header.from=origin.example\r\n"
        f"From: Bob <bob@origin.example>\r\n"
        f"To: {INBOX}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@origin.example>\r\n"
        f"\r\n"
        f"Forwarded body of {subject}.\r\n"
    ).encode()
    private = serialization.load_pem_private_key(key.private_pem, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    arc_set = dkim.arc_sign(original, b"arc", key.domain.encode(), private, key.domain.encode(), timestamp=NOW)
    return b"".join(arc_set) + original


def send(server: AgentpostServer, mail_from: str, raw: bytes) -> tuple[int, str]:
    with smtp(server.mx_host, server.mx_port) as client:
        client.mail(mail_from)
        assert client.rcpt(INBOX)[0] == 250
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, error = exc.smtp_code, exc.smtp_error
            reply = error if isinstance(error, bytes) else error.encode()
    return code, reply.decode()


def test_mail_forwarded_by_a_trusted_sealer_is_stored_with_arc_pass(
    server: AgentpostServer, keys: dict[str, DkimKey]
) -> None:
    code, reply = send(server, "fwd@forwarder.example", forwarded(keys["forwarder.example"], "trusted forward"))
    assert code == 250, reply
    with server.client() as http:
        listed = wait_list(http, f"/v0/inboxes/{INBOX}/messages", "messages", 1)[0]
        assert listed["subject"] == "trusted forward" and "unauthenticated" not in listed["labels"]
        full = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}").json()
        auth = full["auth"]
        assert auth["verdict"] == "arc" and auth["dmarc"]["result"] == "fail"
        assert auth["arc"] == {
            "result": "pass",
            "reason": "",
            "instances": 1,
            "sealers": ["forwarder.example"],
            "oldest_pass": 0,
        }
        link = http.get(f"/v0/inboxes/{INBOX}/messages/{listed['message_id']}/raw").json()["download_url"]
        stored = httpx.get(link, timeout=10).content
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    ours = head.split("\r\nAuthentication-Results: mx")[1]
    assert "arc=pass (sealed by forwarder.example) header.oldest-pass=0 smtp.remote-ip=127.0.0.1" in ours, head


def test_the_same_mail_sealed_by_an_untrusted_sealer_is_refused_for_p_reject(
    server: AgentpostServer, keys: dict[str, DkimKey]
) -> None:
    code, reply = send(server, "fwd@stranger.example", forwarded(keys["stranger.example"], "untrusted forward"))
    assert code == 550 and reply.startswith("5.7.1"), reply
