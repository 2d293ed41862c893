"""Outbound delivery for real: MX lookup through a DNS server on loopback, an SMTP peer that
accepts, refuses (550 5.1.1) or defers (451), null MX; attempts logged, bounces suppressed and
reported to the sender's inbox with an RFC 3464 DSN."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from dnsserver import DnsServer
from mailclient import setup_inbox
from serverproc import AgentpostServer, free_port

PEER_IP = "127.0.0.7"


class Peer:
    """Accepts mail, except: unknown@ -> 550 5.1.1; later@ -> 451 on the first try."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.deferred_once: set[str] = set()
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        local = address.split("@")[0]
        if local == "unknown":
            return "550 5.1.1 No such user here"
        if local == "later" and address not in self.deferred_once:
            self.deferred_once.add(address)
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 2.0.0 OK queued"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[tuple[AgentpostServer, Peer]]:
    peer = Peer()
    port = free_port(PEER_IP)
    controller = Controller(peer, hostname=PEER_IP, port=port)
    controller.start()
    zone = {
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": [PEER_IP]},
        "implicit.test": {"A": [PEER_IP]},
        "nullmx.test": {"MX": [(0, ".")]},
    }
    dns = DnsServer(zone, servfail=["broken.test"])
    dns.start()
    url = str(postgres.create_database("o" + str(port))) if postgres is not None else ""
    server = AgentpostServer(
        tmp_path_factory.mktemp("outbound") / "data",
        database_url=url,
        extra_env={
            "AGENTPOST_DNS_SERVERS": dns.address,
            "AGENTPOST_OUTBOUND_PORT": str(port),
            "AGENTPOST_OUTBOUND_RETRY_SCHEDULE": "[0.5]",
            "AGENTPOST_OUTBOUND_SOURCE": "127.0.0.2",
        },
    )
    server.setup()
    server.start()
    try:
        yield server, peer
    finally:
        server.stop()
        dns.stop()
        controller.stop()


def _send(http: httpx.Client, inbox: str, to: str, subject: str) -> dict[str, Any]:
    response = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": to, "subject": subject, "text": "hello"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _deliveries(
    http: httpx.Client, inbox: str, message_id: str, until: str, timeout: float = 20
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/deliveries").json()["deliveries"]
        if any(d["outcome"] == until for d in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {until} attempt: {found}")


def test_message_is_delivered_through_the_mx_byte_identical_and_logged(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with server.client() as http:
        inbox = setup_inbox(http, "sender@out.example.test")
        sent = _send(http, inbox, "ok@remote.test", "hello remote")
        attempts = _deliveries(http, inbox, sent["message_id"], "delivered")
        assert attempts[-1]["code"] == 250 and attempts[-1]["remote_host"] == "mx.remote.test"
        assert attempts[-1]["remote_ip"] == PEER_IP
        link = http.get(f"/v0/inboxes/{inbox}/messages/{sent['message_id']}/raw").json()["download_url"]
        raw = httpx.get(link).content
    arrived = [m for m in peer.messages if "ok@remote.test" in m[1]]
    # VERP: the envelope sender is bounces+TOKEN at the inbox's domain (RFC 5321 §4.5.3.1.1: <= 64 octets).
    assert arrived and arrived[0][0].startswith("bounces+") and arrived[0][0].endswith("@out.example.test")
    assert len(arrived[0][0].partition("@")[0]) <= 64
    assert arrived[0][2] == raw  # DKIM-signed bytes arrive exactly as stored


def test_a_domain_without_mx_is_delivered_to_its_address_record(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with server.client() as http:
        inbox = setup_inbox(http, "implicit@out2.example.test")
        sent = _send(http, inbox, "someone@implicit.test", "implicit mx")
        assert _deliveries(http, inbox, sent["message_id"], "delivered")[-1]["remote_host"] == "implicit.test"


def test_550_5_1_1_bounces_suppresses_and_puts_a_dsn_in_the_senders_inbox(world: tuple[AgentpostServer, Peer]) -> None:
    server, _ = world
    with server.client() as http:
        inbox = setup_inbox(http, "bouncer@out3.example.test")
        sent = _send(http, inbox, "unknown@remote.test", "to nobody")
        attempt = _deliveries(http, inbox, sent["message_id"], "bounced")[-1]
        assert (attempt["code"], attempt["enhanced"]) == (550, "5.1.1")
        assert "No such user" in attempt["reply"]
        suppressed = http.get("/v0/suppressions").json()["suppressions"]
        assert any(s["address"] == "unknown@remote.test" and s["reason"] == "bounced" for s in suppressed)
        again = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": "unknown@remote.test", "text": "x"})
        assert again.status_code == 422 and "suppressed" in again.text
        deadline = time.monotonic() + 10
        dsn: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not dsn:
            listed = http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "bounce"}).json()["messages"]
            dsn = listed
            time.sleep(0.1)
        assert dsn, "no DSN in the sender's inbox"
        entry = http.get("/v0/suppressions/Unknown@remote.test").json()
        assert entry["address"] == "unknown@remote.test" and entry["suppressions"][0]["reason"] == "bounced"
        assert "550 5.1.1" in entry["suppressions"][0]["reply"]
        assert http.delete("/v0/suppressions/unknown@remote.test").status_code == 204
        assert http.get("/v0/suppressions/unknown@remote.test").status_code == 404


def test_a_451_is_retried_and_then_delivered(world: tuple[AgentpostServer, Peer]) -> None:
    server, _ = world
    with server.client() as http:
        inbox = setup_inbox(http, "patient@out4.example.test")
        sent = _send(http, inbox, "later@remote.test", "retry me")
        attempts = _deliveries(http, inbox, sent["message_id"], "delivered")
        outcomes = [a["outcome"] for a in attempts]
        assert outcomes[0] == "deferred" and outcomes[-1] == "delivered"
        assert attempts[0]["code"] == 451


def test_null_mx_bounces_at_once_and_servfail_defers(world: tuple[AgentpostServer, Peer]) -> None:
    server, _ = world
    with server.client() as http:
        inbox = setup_inbox(http, "edges@out5.example.test")
        sent = _send(http, inbox, "x@nullmx.test", "null mx")
        assert _deliveries(http, inbox, sent["message_id"], "bounced")[-1]["enhanced"] == "5.1.10"
        broken = _send(http, inbox, "x@broken.test", "servfail")
        attempts = _deliveries(http, inbox, broken["message_id"], "deferred")
        assert attempts[0]["code"] == 451 and attempts[0]["enhanced"] == "4.4.3"
        assert all(a["outcome"] == "deferred" for a in attempts)
