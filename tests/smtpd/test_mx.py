"""The MX as a real SMTP peer sees it: relay denied, unknown user, size, STARTTLS, enhanced codes."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailclient import send_raw, setup_inbox, smtp, wait_list
from serverproc import AgentpostServer


@pytest.fixture(scope="module")
def inbox(shared_server: AgentpostServer) -> Iterator[str]:
    with shared_server.client() as http:
        yield setup_inbox(http, "agent@mx.example.test")


def test_rcpt_to_a_domain_we_do_not_host_is_relay_denied_550_5_7_1(shared_server: AgentpostServer, inbox: str) -> None:
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        client.mail("spammer@remote.test")
        code, message = client.rcpt("victim@elsewhere.test")
    assert code == 550
    assert message.startswith(b"5.7.1")


def test_rcpt_to_an_unknown_local_part_at_a_hosted_domain_is_550_5_1_1(
    shared_server: AgentpostServer, inbox: str
) -> None:
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        client.mail("a@remote.test")
        code, message = client.rcpt("nobody@mx.example.test")
    assert (code, message[:5]) == (550, b"5.1.1")


def test_ehlo_advertises_size_starttls_pipelining_and_enhanced_status_codes(
    shared_server: AgentpostServer, inbox: str
) -> None:
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        for extension in ("size", "starttls", "pipelining", "enhancedstatuscodes", "8bitmime", "smtputf8"):
            assert client.has_extn(extension), extension
        assert int(client.esmtp_features["size"]) == 25 * 1024 * 1024


def test_every_reply_after_the_greeting_carries_an_enhanced_code(shared_server: AgentpostServer, inbox: str) -> None:
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        replies = [
            client.mail("a@remote.test"),
            client.rcpt(inbox),
            client.rset(),
            client.docmd("NOOP"),
            client.docmd("VRFY", "agent"),
            client.docmd("BOGUS"),
            client.docmd("DATA"),
        ]
    for code, message in replies:
        assert message[:1] in b"245" and message[1:2] == b"." and message[3:4] in b"0123456789.", (code, message)


def test_starttls_with_swaks_delivers(shared_server: AgentpostServer, inbox: str) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            shared_server.mx_host,
            "--port",
            str(shared_server.mx_port),
            "-tls",
            "--from",
            "tls@remote.test",
            "--to",
            inbox,
            "--header",
            "Subject: over tls",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS started" in result.stdout
    with shared_server.client() as http:
        found = wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 1)
        subjects = [m.get("subject") for m in found]
        assert "over tls" in subjects
        message = next(m for m in found if m.get("subject") == "over tls")
        raw = http.get(f"/v0/inboxes/{inbox}/messages/{message['message_id']}/raw").json()
        import httpx

        data = httpx.get(raw["download_url"]).content
        assert b"with ESMTPS" in data and b"TLSv1.3" in data


def test_message_over_the_size_limit_is_refused_552_5_3_4(tmp_path: Path) -> None:
    server = AgentpostServer(tmp_path / "data", extra_env={"AGENTPOST_MX_MAX_MESSAGE_SIZE": "20000"})
    server.setup()
    server.start()
    try:
        with server.client() as http:
            address = setup_inbox(http, "small@size.example.test")
        with smtp(server.mx_host, server.mx_port) as client:
            assert int(client.esmtp_features["size"]) == 20000
            code, message = client.mail("a@remote.test", ["SIZE=50000"])
            assert (code, message[:5]) == (552, b"5.3.4")
            client.rset()
            client.mail("a@remote.test")
            client.rcpt(address)
            code, message = client.data(b"Subject: big\r\n\r\n" + b"x" * 60 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 30)
            assert (code, message[:5]) == (552, b"5.3.4")
        assert (
            send_raw(server.mx_host, server.mx_port, "a@remote.test", [address], b"Subject: ok\r\n\r\nsmall\r\n")[0]
            == 250
        )
    finally:
        server.stop()


def test_one_message_for_two_inboxes_is_stored_once_per_inbox(shared_server: AgentpostServer, inbox: str) -> None:
    with shared_server.client() as http:
        second = setup_inbox(http, "second@mx.example.test")
        raw = b"Message-ID: <two-inboxes@remote.test>\r\nSubject: both\r\n\r\nhello both\r\n"
        assert send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox, second], raw)[0] == 250
        for address in (inbox, second):
            msg = http.get(f"/v0/inboxes/{address}/messages/<two-inboxes@remote.test>")
            assert msg.status_code == 200, msg.text
            assert msg.json()["inbox_id"] == address
        first_thread = http.get(f"/v0/inboxes/{inbox}/messages/<two-inboxes@remote.test>").json()["thread_id"]
        second_thread = http.get(f"/v0/inboxes/{second}/messages/<two-inboxes@remote.test>").json()["thread_id"]
        assert first_thread != second_thread


def test_client_without_tls_context_can_still_negotiate_tls_1_2_or_better(
    shared_server: AgentpostServer, inbox: str
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(shared_server.mx_host, shared_server.mx_port, timeout=30) as client:
        client.starttls(context=context)
        assert client.sock is not None
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        code, _ = client.ehlo("after.tls.test")
        assert code == 250


def test_dot_stuffed_lines_and_an_empty_body_are_stored_as_sent(shared_server: AgentpostServer, inbox: str) -> None:
    import httpx

    body = b"Message-ID: <dots@remote.test>\r\nSubject: dots\r\n\r\n.leading dot\r\n.\r\n..two\r\nend.\r\n"
    # smtplib dot-stuffs on the wire (RFC 5321 4.5.2); the server must undo it exactly.
    assert send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox], body)[0] == 250
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        client.mail("a@remote.test")
        client.rcpt(inbox)
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(b".\r\n")  # an empty message
        assert client.getreply()[0] == 250
    with shared_server.client() as http:
        wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 1)
        raw = http.get(f"/v0/inboxes/{inbox}/messages/<dots@remote.test>/raw").json()
        data = httpx.get(raw["download_url"]).content
    assert data.endswith(b"\r\n\r\n.leading dot\r\n.\r\n..two\r\nend.\r\n")
