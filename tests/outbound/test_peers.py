"""Outbound delivery to real peers, all on loopback: a test DNS server's MX records send one
agentpost (A) to a private Postfix with STARTTLS, to a second agentpost bound to 127.0.0.3, to
Postfix's smtp-sink, and to an address where nothing listens (connection refused).

outbound.port applies to every MX host, so every peer listens on the same port number P, each on
its own loopback address. The 4xx retry, 550 5.1.1, null MX, implicit MX and SERVFAIL cases run
against an aiosmtpd peer in test_delivery.py.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from dnsserver import DnsServer
from mailclient import setup_inbox
from postfixpeer import PrivatePostfix, ensure_loopback_address
from serverproc import AgentpostServer, free_port_on_all, wait_port
from webhookreceiver import WebhookReceiver

SOURCE_IP = "127.0.0.2"  # A's outbound connections come from here
AGENTPOST_B_IP = "127.0.0.3"
POSTFIX_IP = "127.0.0.5"
SINK_IP = "127.0.0.8"
REFUSED_IP = "127.0.0.9"  # nothing ever listens here
PEER_IPS = (AGENTPOST_B_IP, POSTFIX_IP, SINK_IP, REFUSED_IP)
# A deferred message bounces (Transient) after this many seconds: long enough for the peers that
# accept at once, short enough for the connection-refused case to expire within the test.
LIFETIME = 4.0
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:/sbin:/bin")
# Postfix prepends these when it delivers into a Maildir; everything after them is the message.
TRACE_HEADERS = {b"return-path", b"delivered-to", b"x-original-to", b"received"}


@dataclass
class World:
    a: AgentpostServer
    b: AgentpostServer
    postfix: PrivatePostfix
    sink_port: int
    dns: DnsServer


@pytest.fixture(scope="module")
def port() -> int:
    for ip in (POSTFIX_IP, SINK_IP):
        ensure_loopback_address(ip)  # Postfix insists on it; smtp-sink is happy either way
    return free_port_on_all(PEER_IPS)


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    zone: dict[str, dict[str, list[Any]]] = {
        "postfix.test": {"MX": [(10, "mx.postfix.test")]},
        "mx.postfix.test": {"A": [POSTFIX_IP]},
        "b.test": {"MX": [(10, "mx.b.test")]},
        "mx.b.test": {"A": [AGENTPOST_B_IP]},
        "sink.test": {"MX": [(10, "mx.sink.test")]},
        "mx.sink.test": {"A": [SINK_IP]},
        "refused.test": {"MX": [(10, "mx.refused.test")]},
        "mx.refused.test": {"A": [REFUSED_IP]},
    }
    with DnsServer(zone) as server:
        yield server


@pytest.fixture(scope="module")
def postfix(port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostfix]:
    """Postfix in sink mode for postfix.test, offering STARTTLS with a certificate for its MX name."""
    tls = tmp_path_factory.mktemp("postfix-tls")
    cert = trustme.CA().issue_cert("mx.postfix.test")
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tls / "cert.pem"), append=True)
    tls_cf = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(tls / "cert.pem"),
        "smtpd_tls_key_file": str(tls / "key.pem"),
        "smtpd_tls_loglevel": "1",
    }
    with PrivatePostfix(POSTFIX_IP, port, domain="postfix.test", extra_main_cf=tls_cf) as server:
        yield server


@pytest.fixture(scope="module")
def smtp_sink(port: int) -> Iterator[int]:
    # scripts/install-test-deps.sh installs postfix: a missing smtp-sink is a setup failure.
    assert SMTP_SINK is not None, "postfix smtp-sink not installed: run scripts/install-test-deps.sh"
    command = [SMTP_SINK, "-h", "mx.sink.test", f"{SINK_IP}:{port}", "100"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(SINK_IP, port, timeout=10)
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def _server(data_dir: Path, postgres: Any, **kwargs: Any) -> AgentpostServer:
    url = str(postgres.create_database("p" + uuid.uuid4().hex[:12])) if postgres is not None else ""
    server = AgentpostServer(data_dir, database_url=url, **kwargs)
    server.setup()
    server.start()
    return server


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Any,
    port: int,
    dns: DnsServer,
    postfix: PrivatePostfix,
    smtp_sink: int,
) -> Iterator[World]:
    b = _server(
        tmp_path_factory.mktemp("agentpost-b") / "data",
        postgres,
        mx_host=AGENTPOST_B_IP,
        mx_port=port,
        extra_env={"AGENTPOST_DNS_SERVERS": dns.address, "AGENTPOST_HOSTNAME": "mx.b.test"},
    )
    try:
        a = _server(
            tmp_path_factory.mktemp("agentpost-a") / "data",
            postgres,
            extra_env={
                "AGENTPOST_DNS_SERVERS": dns.address,
                "AGENTPOST_OUTBOUND_PORT": str(port),
                "AGENTPOST_OUTBOUND_SOURCE": SOURCE_IP,
                "AGENTPOST_OUTBOUND_RETRY_SCHEDULE": "[0.5]",
                "AGENTPOST_OUTBOUND_LIFETIME": str(LIFETIME),
                "AGENTPOST_WEBHOOKS_RETRY_SCHEDULE": "[0.5]",
            },
        )
        try:
            yield World(a, b, postfix, smtp_sink, dns)
        finally:
            a.stop()
    finally:
        b.stop()


def _send(http: httpx.Client, inbox: str, to: str, subject: str, text: str = "hello") -> str:
    response = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": to, "subject": subject, "text": text})
    assert response.status_code == 200, response.text
    return str(response.json()["message_id"])


def _deliveries(
    http: httpx.Client, inbox: str, message_id: str, until: str, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/deliveries").json()["deliveries"]
        if any(d["outcome"] == until for d in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {until} attempt: {found}")


def _raw(http: httpx.Client, inbox: str, message_id: str) -> bytes:
    link = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/raw").json()["download_url"]
    return httpx.get(link, timeout=30).content


def _split_trace(delivered: bytes) -> tuple[list[bytes], bytes]:
    """(names of the leading trace header fields, the rest) of a message Postfix delivered."""
    names: list[bytes] = []
    rest = delivered
    while rest and rest[:1] not in (b" ", b"\t", b"\n"):
        name = rest.split(b":", 1)[0].strip().lower()
        if name not in TRACE_HEADERS:
            break
        names.append(name)
        rest = rest.split(b"\n", 1)[1]
        while rest[:1] in (b" ", b"\t"):  # folded continuation lines of the same field
            rest = rest.split(b"\n", 1)[1]
    return names, rest


def test_postfix_peer_negotiates_starttls_and_receives_the_stored_bytes(world: World) -> None:
    with world.a.client() as http:
        inbox = setup_inbox(http, "sender@a-postfix.test")
        message_id = _send(http, inbox, "someone@postfix.test", "to postfix", "hello postfix\r\n.a dot line")
        attempt = _deliveries(http, inbox, message_id, "delivered")[-1]
        stored = _raw(http, inbox, message_id)
    assert (attempt["code"], attempt["remote_host"], attempt["remote_ip"]) == (250, "mx.postfix.test", POSTFIX_IP)
    assert attempt["tls_version"] in ("TLSv1.2", "TLSv1.3"), attempt
    assert world.postfix.wait_delivered(1, timeout=30) == 1, world.postfix.log_text()
    delivered = world.postfix.delivered_messages()[0]
    trace, message = _split_trace(delivered)
    assert b"received" in trace and b"delivered-to" in trace, delivered[:600]
    assert b"using TLS" in delivered or "TLS connection established" in world.postfix.log_text()
    # A Maildir holds UNIX text: Postfix stores lines without their CRLF and local delivery
    # writes them with LF. The bytes are otherwise identical: DKIM-signed headers, body, dots.
    assert b"\r\n" in stored and b"\r" not in message
    assert message == stored.replace(b"\r\n", b"\n")


def test_second_agentpost_on_127_0_0_3_receives_the_signed_message_in_its_inbox(world: World) -> None:
    with world.b.client() as http:
        target = setup_inbox(http, "someone@b.test")
    with world.a.client() as http:
        inbox = setup_inbox(http, "sender@a-agentpost.test")
        message_id = _send(http, inbox, "someone@b.test", "agent to agent", "hello from A")
        attempt = _deliveries(http, inbox, message_id, "delivered")[-1]
        stored = _raw(http, inbox, message_id)
    assert (attempt["code"], attempt["remote_host"], attempt["remote_ip"]) == (250, "mx.b.test", AGENTPOST_B_IP)
    assert attempt["tls_version"] is not None  # B offers STARTTLS with its self-signed certificate
    with world.b.client() as http:
        deadline = time.monotonic() + 20
        listed: list[dict[str, Any]] = []
        while not listed and time.monotonic() < deadline:
            listed = http.get(f"/v0/inboxes/{target}/messages").json()["messages"]
            time.sleep(0.1)
        assert [m["message_id"] for m in listed] == [message_id]
        received = http.get(f"/v0/inboxes/{target}/messages/{message_id}").json()
        raw = _raw(http, target, message_id)
    assert received["subject"] == "agent to agent"
    assert received["text"].strip() == "hello from A"
    assert received["from"].endswith("<sender@a-agentpost.test>") or received["from"] == "sender@a-agentpost.test"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    signatures = parsed.get_all("DKIM-Signature") or []
    assert signatures and all("d=a-agentpost.test" in str(s).replace(" ", "") for s in signatures)
    # B keeps what came over the wire, below its own trace fields.
    assert raw.endswith(stored)


def test_smtp_sink_peer_accepts_and_the_attempt_records_its_reply(world: World) -> None:
    with world.a.client() as http:
        inbox = setup_inbox(http, "sender@a-sink.test")
        message_id = _send(http, inbox, "anyone@sink.test", "to the sink")
        attempts = _deliveries(http, inbox, message_id, "delivered")
    assert [a["outcome"] for a in attempts] == ["delivered"]
    attempt = attempts[0]
    assert (attempt["code"], attempt["enhanced"], attempt["remote_host"]) == (250, "2.0.0", "mx.sink.test")
    assert attempt["remote_ip"] == SINK_IP and attempt["recipient"] == "anyone@sink.test"
    assert "Ok" in attempt["reply"]


def test_connection_refused_is_deferred_with_the_error_then_bounces_transient_after_the_lifetime(
    world: World,
) -> None:
    with WebhookReceiver() as hooks, world.a.client() as http:
        inbox = setup_inbox(http, "sender@a-refused.test")
        hook = http.post(f"/v0/inboxes/{inbox}/webhooks", json={"url": hooks.url, "event_types": ["message.bounced"]})
        assert hook.status_code == 200, hook.text
        started = time.monotonic()
        message_id = _send(http, inbox, "nobody@refused.test", "nobody listens")
        attempts = _deliveries(http, inbox, message_id, "bounced", timeout=LIFETIME + 30)
        deferred = [a for a in attempts if a["outcome"] == "deferred"]
        assert attempts[-1]["outcome"] == "bounced" and len(deferred) == len(attempts) - 1 >= 1
        assert time.monotonic() - started >= LIFETIME * 0.9
        for attempt in attempts:
            assert (attempt["code"], attempt["enhanced"]) == (451, "4.4.1"), attempt
            assert (attempt["remote_host"], attempt["remote_ip"]) == ("mx.refused.test", REFUSED_IP)
            assert f"{REFUSED_IP}:" in attempt["reply"] and "refused" in attempt["reply"].lower(), attempt
        hooks.wait_for(1, timeout=30)
        events = [e for e in hooks.events() if e["event_type"] == "message.bounced"]
        assert len(events) == 1, events
        bounce = events[0]["bounce"]
        assert bounce["type"] == "Transient"
        assert [r["address"] for r in bounce["recipients"]] == ["nobody@refused.test"]
        # A Transient bounce does not suppress the address: the next message may get through.
        suppressed = http.get("/v0/suppressions").json()["suppressions"]
        assert all(s["address"] != "nobody@refused.test" for s in suppressed)
        deadline = time.monotonic() + 20
        dsn: list[dict[str, Any]] = []
        while not dsn and time.monotonic() < deadline:
            dsn = http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "bounce"}).json()["messages"]
            time.sleep(0.1)
        assert len(dsn) == 1, "no DSN in the sender's inbox"
