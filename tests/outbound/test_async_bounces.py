"""Bounces that arrive later by mail, for real: a message is delivered to a remote peer with a
VERP envelope sender; a DSN sent over SMTP to the server's MX at that address produces
message.bounced, a suppression, a "bounced" delivery row and the DSN in the sender's inbox.
Forged tokens are refused at RCPT; delayed reports are not bounces; nothing is ever sent back."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from dnsserver import DnsServer
from mailclient import setup_inbox, smtp
from serverproc import AgentpostServer, free_port
from webhookreceiver import WebhookReceiver

PEER_IP = "127.0.0.8"


class Peer:
    """A remote MX that accepts everything and remembers envelopes."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

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
    dns = DnsServer({"remote.test": {"MX": [(10, "mx.remote.test")]}, "mx.remote.test": {"A": [PEER_IP]}})
    dns.start()
    url = str(postgres.create_database("ab" + str(port))) if postgres is not None else ""
    server = AgentpostServer(
        tmp_path_factory.mktemp("async-bounces") / "data",
        database_url=url,
        extra_env={
            "AGENTPOST_DNS_SERVERS": dns.address,
            "AGENTPOST_OUTBOUND_PORT": str(port),
            "AGENTPOST_OUTBOUND_RETRY_SCHEDULE": "[0.5]",
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


def _delivered(
    http: httpx.Client, peer: Peer, inbox: str, to: str | list[str], subject: str
) -> tuple[dict[str, Any], str]:
    """Send, wait until the peer has it; (send response, the VERP envelope sender it came with)."""
    response = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": to, "subject": subject, "text": "hi"})
    assert response.status_code == 200, response.text
    sent = dict(response.json())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with peer.lock:
            found = [m for m in peer.messages if f"Subject: {subject}".encode() in m[2]]
        if found:
            return sent, found[0][0]
        time.sleep(0.05)
    raise AssertionError("the peer never got the message")


def _deliveries(http: httpx.Client, inbox: str, message_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/deliveries").json()["deliveries"])


def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def dsn(verp: str, recipient: str, message_id: str, *, action: str = "failed", status: str = "5.1.1") -> bytes:
    """An RFC 3464 report as a remote MTA writes it (multipart/report, RFC 6522)."""
    diagnostic = f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown"
    if action == "delayed":
        diagnostic = f"smtp; 451 4.2.0 <{recipient}>: mailbox busy, still trying"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.remote.test>\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Sat, 21 Nov 2026 07:00:00 +0000\r\n"
        f"Message-ID: <dsn-{time.monotonic_ns()}@mx.remote.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "The mail system could not deliver your message.\r\n"
        "\r\n"
        "--B\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.remote.test\r\n"
        "Arrival-Date: Sat, 21 Nov 2026 06:59:58 +0000\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mailbox.remote.test\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        "--B\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"Message-ID: {message_id}\r\n"
        "Subject: whatever\r\n"
        "\r\n"
        "--B--\r\n"
    ).encode()


def _mail(server: AgentpostServer, rcpt: str, raw: bytes, mail_from: str = "") -> tuple[int, bytes]:
    """One SMTP transaction to the server's MX with the null reverse-path (RFC 5321 §4.5.5)."""
    with smtp(server.mx_host, server.mx_port) as client:
        code, reply = client.mail(mail_from)  # smtplib writes "" as <>
        assert code == 250, reply
        code, reply = client.rcpt(rcpt)
        assert code == 250, (code, reply)
        return client.data(raw)


def test_dsn_to_the_verp_address_bounces_suppresses_logs_and_lands_in_the_senders_inbox(
    world: tuple[AgentpostServer, Peer],
) -> None:
    server, peer = world
    with WebhookReceiver() as hooks, server.client() as http:
        inbox = setup_inbox(http, "sender@verp1.example.test")
        hook = http.post(f"/v0/inboxes/{inbox}/webhooks", json={"url": hooks.url, "event_types": ["message.bounced"]})
        assert hook.status_code == 200, hook.text
        sent, verp = _delivered(http, peer, inbox, "gone@remote.test", "async bounce")
        local, _, domain = verp.partition("@")
        assert local.startswith("bounces+") and len(local) <= 64 and domain == "verp1.example.test"
        _wait(lambda: [d for d in _deliveries(http, inbox, sent["message_id"]) if d["outcome"] == "delivered"])

        code, reply = _mail(server, verp, dsn(verp, "gone@remote.test", sent["message_id"]))
        assert code == 250, reply

        events = [e for e in hooks.wait_for(1) and hooks.events() if e["event_type"] == "message.bounced"]
        assert len(events) == 1, events
        bounce = events[0]["bounce"]
        assert (bounce["message_id"], bounce["thread_id"]) == (sent["message_id"], sent["thread_id"])
        assert (bounce["type"], bounce["sub_type"]) == ("Permanent", "MailboxDoesNotExist")
        assert bounce["recipients"] == [{"address": "gone@remote.test", "status": "5.1.1"}]

        suppressed = http.get("/v0/suppressions").json()["suppressions"]
        entry = next(s for s in suppressed if s["address"] == "gone@remote.test")
        assert entry["reason"] == "bounced" and entry["inbox_id"] == inbox and "User unknown" in entry["reply"]

        rows = _deliveries(http, inbox, sent["message_id"])
        assert [r["outcome"] for r in rows] == ["delivered", "bounced"]
        assert (rows[-1]["code"], rows[-1]["enhanced"], rows[-1]["remote_host"]) == (
            550,
            "5.1.1",
            "mailbox.remote.test",
        )

        # The report itself is in the sender's inbox, labelled bounce, in the bounced message's thread.
        reports = http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "bounce"}).json()["messages"]
        assert len(reports) == 1 and reports[0]["thread_id"] == sent["thread_id"]

        # The same report again (a 250 lost on the way back) does not bounce twice.
        code, _ = _mail(server, verp, dsn(verp, "gone@remote.test", sent["message_id"]))
        assert code == 250
        time.sleep(1.5)
        assert len([e for e in hooks.events() if e["event_type"] == "message.bounced"]) == 1
        assert [r["outcome"] for r in _deliveries(http, inbox, sent["message_id"])] == ["delivered", "bounced"]

    # No backscatter: nothing was sent anywhere in response.
    with peer.lock:
        assert not [m for m in peer.messages if b"Undelivered" in m[2] or not m[0]]


def test_a_forged_or_altered_verp_token_is_refused_550_5_1_1_at_rcpt(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with server.client() as http:
        inbox = setup_inbox(http, "sender@verp2.example.test")
        _, verp = _delivered(http, peer, inbox, "someone@remote.test", "forgery target")
    local, _, domain = verp.partition("@")
    altered = local[:-1] + ("a" if local[-1] != "a" else "b")
    forged = [
        f"{altered}@{domain}",
        f"bounces+{'0' * 42}@{domain}",
        f"bounces+nonsense@{domain}",
        f"unsubscribe+{local.partition('+')[2]}@{domain}",  # a bounce token is not an unsubscribe token
    ]
    with smtp(server.mx_host, server.mx_port) as client:
        client.mail("<>")
        for address in forged:
            code, reply = client.rcpt(address)
            assert (code, reply[:5]) == (550, b"5.1.1"), (address, code, reply)
        code, _ = client.rcpt(verp.upper())  # MTAs may fold case: the token still matches
        assert code == 250


def test_a_delayed_report_is_not_a_bounce(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with WebhookReceiver() as hooks, server.client() as http:
        inbox = setup_inbox(http, "sender@verp3.example.test")
        http.post(f"/v0/inboxes/{inbox}/webhooks", json={"url": hooks.url, "event_types": ["message.bounced"]})
        sent, verp = _delivered(http, peer, inbox, "slow@remote.test", "delayed report")
        _wait(lambda: _deliveries(http, inbox, sent["message_id"]))
        report = dsn(verp, "slow@remote.test", sent["message_id"], action="delayed", status="4.2.0")
        assert _mail(server, verp, report)[0] == 250
        rows = _wait(lambda: [r for r in _deliveries(http, inbox, sent["message_id"]) if r["outcome"] != "delivered"])
        assert [r["outcome"] for r in rows] == ["deferred"] and rows[0]["enhanced"] == "4.2.0"
        time.sleep(1.5)
        assert not hooks.events()
        suppressed = http.get("/v0/suppressions").json()["suppressions"]
        assert all(s["address"] != "slow@remote.test" for s in suppressed)


def test_a_non_standard_bounce_is_read_by_heuristics(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with server.client() as http:
        inbox = setup_inbox(http, "sender@verp4.example.test")
        sent, verp = _delivered(http, peer, inbox, "nobody@remote.test", "qmail style")
        _wait(lambda: _deliveries(http, inbox, sent["message_id"]))
        qmail = (
            "From: MAILER-DAEMON@mx.remote.test\r\n"
            f"To: {verp}\r\n"
            "Subject: failure notice\r\n"
            "\r\n"
            "Hi. This is the qmail-send program at mx.remote.test.\r\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
            "This is a permanent error; I've given up. Sorry it didn't work out.\r\n"
            "\r\n"
            "<nobody@remote.test>:\r\n"
            "Sorry, no mailbox here by that name. (#5.1.1)\r\n"
            "\r\n"
            "--- Below this line is a copy of the message.\r\n"
            "\r\n"
            f"Message-ID: {sent['message_id']}\r\n"
        ).encode()
        assert _mail(server, verp, qmail)[0] == 250
        rows = _wait(lambda: [r for r in _deliveries(http, inbox, sent["message_id"]) if r["outcome"] == "bounced"])
        assert rows[0]["recipient"] == "nobody@remote.test"
        suppressed = http.get("/v0/suppressions").json()["suppressions"]
        assert any(s["address"] == "nobody@remote.test" and s["reason"] == "bounced" for s in suppressed)


def test_mail_to_the_unsubscribe_address_suppresses_its_sender(world: tuple[AgentpostServer, Peer]) -> None:
    server, peer = world
    with server.client() as http:
        inbox = setup_inbox(http, "sender@verp5.example.test")
        to = ["alice@remote.test", "bob@remote.test"]
        sent, _ = _delivered(http, peer, inbox, to, "newsletter")
        with peer.lock:
            raw = next(m[2] for m in peer.messages if b"Subject: newsletter" in m[2])
        header = next(line for line in raw.decode().split("\r\n") if line.lower().startswith("list-unsubscribe:"))
        # Two recipients: one URL cannot name each, so only the mailto URI (and no one-click).
        assert "<mailto:unsubscribe+" in header and "https://" not in header
        assert b"List-Unsubscribe-Post" not in raw
        mailto = header.split("<mailto:")[1].split(">")[0].split("?")[0]
        request = b"From: Bob <bob@remote.test>\r\nTo: " + mailto.encode() + b"\r\nSubject: unsubscribe\r\n\r\n\r\n"
        code, reply = _mail(server, mailto, request, mail_from="bob@remote.test")
        assert code == 250, reply
        suppressed = _wait(
            lambda: [s for s in http.get("/v0/suppressions").json()["suppressions"] if s["reason"] == "unsubscribed"]
        )
        assert [(s["address"], s["inbox_id"]) for s in suppressed] == [("bob@remote.test", inbox)]
        # A sender that was not a recipient unsubscribes nobody.
        code, _ = _mail(server, mailto, request.replace(b"bob@", b"eve@"), mail_from="eve@remote.test")
        assert code == 250
        time.sleep(1)
        assert all(s["address"] != "eve@remote.test" for s in http.get("/v0/suppressions").json()["suppressions"])
        # Nothing was stored for the request: it is acted on, not delivered to an inbox.
        assert not [
            m
            for m in http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "received"}).json()["messages"]
            if m.get("subject") == "unsubscribe"
        ]
        try:
            with smtp(server.mx_host, server.mx_port) as client:
                client.mail("<>")
                assert client.rcpt("unsubscribe+" + "1" * 42 + "@verp5.example.test")[0] == 550
        except smtplib.SMTPException as exc:  # pragma: no cover - a refusal must be a reply
            raise AssertionError(exc) from exc
