"""Outbound SMTP sessions against an in-process aiosmtpd MX on 127.0.0.4 (and Postfix's smtp-sink)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from agentpost.net.smtpclient import SessionResult, SmtpReply, SmtpSession

MX_IP = "127.0.0.4"
MX_NAME = "mx.example.test"

RAW = (
    b"From: Agent <agent@sender.test>\r\n"
    b"To: rcpt@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Message-ID: <1@sender.test>\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b".\r\n"
    b"caf\xc3\xa9 in raw UTF-8 \t trailing space \r\n" + b"x" * 900 + b"\r\n"
    b"\r\n"
    b"last line\r\n"
)


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    peer: Any  # (host, port)
    mail_from: str
    rcpt_to: list[str]
    content: bytes
    mail_options: list[str]
    tls: bool


@dataclass
class RecordingHandler:
    """Accepts everything except the recipients in ``refuse`` (address -> reply line)."""

    refuse: dict[str, str] = field(default_factory=dict)
    data_delay: float = 0.0
    messages: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        assert envelope.original_content is not None
        self.messages.append(
            Received(
                peer=session.peer,
                mail_from=str(envelope.mail_from),
                rcpt_to=list(envelope.rcpt_tos),
                content=envelope.original_content,
                mail_options=list(envelope.mail_options),
                tls=session.ssl is not None,
            )
        )
        return "250 2.0.0 Ok: queued as TEST\r\n".rstrip()


@dataclass
class Mx:
    handler: RecordingHandler
    port: int


@contextmanager
def mx_server(handler: RecordingHandler | None = None, **smtp_params: Any) -> Iterator[Mx]:
    handler = handler or RecordingHandler()
    port = free_port(MX_IP)
    controller = Controller(handler, hostname=MX_IP, port=port, server_hostname=MX_NAME, **smtp_params)
    controller.start()
    try:
        yield Mx(handler, port)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(MX_NAME).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def mx() -> Iterator[Mx]:
    with mx_server() as server:
        yield server


@pytest.fixture
async def session(mx: Mx) -> AsyncIterator[SmtpSession]:
    smtp = SmtpSession(MX_NAME, MX_IP, mx.port, helo="out.sender.test", timeout=5.0, tls="none")
    yield smtp
    await smtp.close()


def delivered(result: SessionResult, rcpt: str) -> bool:
    reply = result.reply_for(rcpt)
    return result.error is None and reply is not None and reply.code == 250


# -- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, text, enhanced",
    [
        (250, "2.0.0 Ok: queued", "2.0.0"),
        (550, "5.1.1 <a@b.test>: Recipient address rejected", "5.1.1"),
        (451, "4.7.1 Try again\n4.7.1 later", "4.7.1"),
        (550, "No such user", None),
        (550, "4.1.1 class does not match the code", None),
        (250, "2.0.0", "2.0.0"),
        (250, "2.0.0queued", None),
    ],
)
def test_enhanced_code_is_parsed_from_reply_text(code: int, text: str, enhanced: str | None) -> None:
    reply = SmtpReply.parse(code, text)
    assert (reply.enhanced, reply.text) == (enhanced, text)


# -- delivery --------------------------------------------------------------------------------


async def test_raw_bytes_arrive_byte_identical(mx: Mx, session: SmtpSession) -> None:
    result = await session.send("agent@sender.test", ["rcpt@example.test"], RAW)
    assert result.error is None, result.error
    assert result.data_reply is not None and result.data_reply.code == 250
    assert result.data_reply.enhanced == "2.0.0"
    (message,) = mx.handler.messages
    assert message.content == RAW
    assert message.mail_from == "agent@sender.test"
    assert message.rcpt_to == ["rcpt@example.test"]
    assert f"SIZE={len(RAW)}" in message.mail_options and "BODY=8BITMIME" in message.mail_options
    assert (result.tls_version, result.tls_verified) == (None, None)
    assert result.duration > 0


async def test_each_recipient_gets_its_own_reply(mx: Mx, session: SmtpSession) -> None:
    mx.handler.refuse = {"busy@example.test": "450 4.2.1 Mailbox busy", "gone@example.test": "550 5.1.1 No such user"}
    rcpts = ["busy@example.test", "ok@example.test", "gone@example.test", "ok2@example.test"]
    result = await session.send("agent@sender.test", rcpts, RAW)
    assert [(r.rcpt, r.reply.code, r.reply.enhanced) for r in result.recipients] == [
        ("busy@example.test", 450, "4.2.1"),
        ("ok@example.test", 250, "2.1.5"),
        ("gone@example.test", 550, "5.1.1"),
        ("ok2@example.test", 250, "2.1.5"),
    ]
    assert result.data_reply is not None and result.data_reply.code == 250
    assert [m.rcpt_to for m in mx.handler.messages] == [["ok@example.test", "ok2@example.test"]]
    assert delivered(result, "ok@example.test") and not delivered(result, "busy@example.test")
    busy = result.reply_for("busy@example.test")
    assert busy is not None and busy.temporary


async def test_all_recipients_refused_means_no_data_and_the_session_stays_usable(mx: Mx, session: SmtpSession) -> None:
    mx.handler.refuse = {"gone@example.test": "550 5.1.1 No such user"}
    refused = await session.send("agent@sender.test", ["gone@example.test"], RAW)
    assert refused.error is None and refused.data_reply is None
    assert refused.recipients[0].reply.code == 550
    assert mx.handler.messages == []
    again = await session.send("agent@sender.test", ["ok@example.test"], RAW)
    assert delivered(again, "ok@example.test")
    assert len(mx.handler.messages) == 1


async def test_two_messages_over_one_connection(mx: Mx, session: SmtpSession) -> None:
    first = await session.send("agent@sender.test", ["one@example.test"], RAW)
    second = await session.send("", ["two@example.test"], RAW.replace(b"<1@", b"<2@"))
    assert delivered(first, "one@example.test") and delivered(second, "two@example.test")
    one, two = mx.handler.messages
    assert one.peer == two.peer  # same client port: the connection was reused
    assert two.mail_from == "<>" or two.mail_from == ""
    assert two.content == RAW.replace(b"<1@", b"<2@")


async def test_source_address_is_bound(mx: Mx) -> None:
    smtp = SmtpSession(MX_NAME, MX_IP, mx.port, helo="out.sender.test", source_address="127.0.0.2", tls="none")
    result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
    await smtp.close()
    assert delivered(result, "rcpt@example.test")
    assert mx.handler.messages[0].peer[0] == "127.0.0.2"


async def test_smtputf8_is_requested_when_needed_and_offered() -> None:
    with mx_server(enable_SMTPUTF8=True) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", tls="none")
        result = await smtp.send("agent@sender.test", ["josé@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "josé@example.test"), result
    assert "SMTPUTF8" in server.handler.messages[0].mail_options
    assert server.handler.messages[0].rcpt_to == ["josé@example.test"]


async def test_smtputf8_needed_but_not_offered_is_refused_locally() -> None:
    with mx_server(enable_SMTPUTF8=False) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", tls="none")
        result = await smtp.send("agent@sender.test", ["josé@example.test"], RAW)
        await smtp.close()
    assert result.error is None
    assert (result.recipients[0].reply.code, result.recipients[0].reply.enhanced) == (553, "5.6.7")
    assert server.handler.messages == []


async def test_address_that_cannot_go_on_a_command_line_is_refused_locally(mx: Mx, session: SmtpSession) -> None:
    result = await session.send("agent@sender.test", ["a@b.test>\r\nRCPT TO:<evil@x.test", "ok@example.test"], RAW)
    assert [r.reply.code for r in result.recipients] == [501, 250]
    assert mx.handler.messages[0].rcpt_to == ["ok@example.test"]


# -- failures never raise --------------------------------------------------------------------


async def test_connection_refused_is_an_error_not_an_exception() -> None:
    smtp = SmtpSession(MX_NAME, MX_IP, free_port(MX_IP), helo="out.sender.test", timeout=5.0)
    result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
    assert result.error is not None and "connect" in result.error
    assert result.recipients == [] and result.data_reply is None
    await smtp.close()


async def test_stalled_greeting_times_out_within_the_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greet
        writer.close()

    server = await asyncio.start_server(stall, MX_IP, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        smtp = SmtpSession(MX_NAME, MX_IP, port, helo="out.sender.test", timeout=0.5)
        started = time.monotonic()
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        elapsed = time.monotonic() - started
        await smtp.close()
    finally:
        server.close()
        await server.wait_closed()
    assert result.error is not None and "timed out" in result.error.lower()
    assert elapsed < 2.0


async def test_stalled_data_reply_times_out_and_leaves_the_outcome_unknown() -> None:
    with mx_server(RecordingHandler(data_delay=3.0)) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=0.5, tls="none")
        started = time.monotonic()
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        elapsed = time.monotonic() - started
        await smtp.close()
    assert result.error is not None and "timed out" in result.error.lower()
    assert result.recipients[0].reply.code == 250 and result.data_reply is None
    assert elapsed < 2.0


# -- TLS -------------------------------------------------------------------------------------


async def test_starttls_with_a_trusted_certificate_is_verified(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with mx_server(tls_context=server_tls) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0, tls_context=client_tls)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_version in ("TLSv1.2", "TLSv1.3") and result.tls_verified is True
    assert result.tls_failure is None
    assert server.handler.messages[0].tls and server.handler.messages[0].content == RAW


async def test_starttls_with_an_untrusted_certificate_still_delivers_encrypted(server_tls: ssl.SSLContext) -> None:
    with mx_server(tls_context=server_tls) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_version is not None and result.tls_verified is False
    assert result.tls_failure is not None and "certificate" in result.tls_failure
    assert server.handler.messages[0].tls


async def test_certificate_for_another_name_is_not_verified(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with mx_server(tls_context=server_tls) as server:
        smtp = SmtpSession("other.example.test", MX_IP, server.port, helo="out.sender.test", tls_context=client_tls)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "rcpt@example.test") and result.tls_verified is False


async def test_unverified_certificate_fails_when_a_verified_one_is_required(server_tls: ssl.SSLContext) -> None:
    with mx_server(tls_context=server_tls) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="h.test", tls="require", require_verified_cert=True)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert result.error is not None and "TLS required" in result.error
    assert server.handler.messages == []


async def test_require_tls_without_starttls_offered_is_a_temporary_error(mx: Mx) -> None:
    smtp = SmtpSession(MX_NAME, MX_IP, mx.port, helo="out.sender.test", timeout=5.0, tls="require")
    result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
    await smtp.close()
    assert result.error is not None and "STARTTLS" in result.error
    assert result.recipients == [] and mx.handler.messages == []


async def test_opportunistic_without_starttls_offered_delivers_in_clear(mx: Mx) -> None:
    smtp = SmtpSession(MX_NAME, MX_IP, mx.port, helo="out.sender.test", timeout=5.0)
    result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
    await smtp.close()
    assert delivered(result, "rcpt@example.test") and result.tls_version is None
    assert not mx.handler.messages[0].tls


async def test_failed_tls_handshake_falls_back_to_clear_in_opportunistic_mode() -> None:
    # A server that offers STARTTLS but whose TLS stack is broken: the handshake cannot succeed.
    broken = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    broken.set_ciphers("aNULL")  # no certificate-bearing suite: every handshake fails
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    with mx_server(tls_context=broken) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
        required = SmtpSession(MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0, tls="require")
        failed = await required.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await required.close()
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_version is None and result.tls_failure is not None and "clear" in result.tls_failure
    assert failed.error is not None and "TLS required" in failed.error
    assert len(server.handler.messages) == 1 and not server.handler.messages[0].tls


async def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with mx_server(ssl_context=server_tls) as server:
        smtp = SmtpSession(
            MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0, tls="implicit", tls_context=client_tls
        )
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_version is not None and result.tls_verified is True
    assert server.handler.messages[0].content == RAW


# -- AUTH (RFC 4954) for smarthosts ------------------------------------------------------------

CREDENTIALS = ("agent", "right-password")


@dataclass
class Authenticator:
    """aiosmtpd's authenticator hook: records every attempt, accepts only CREDENTIALS."""

    attempts: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def __call__(self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        self.attempts.append((mechanism, data.login, data.password))
        # handled=False: aiosmtpd sends the 235 or the 535 itself.
        return AuthResult(success=(data.login.decode(), data.password.decode()) == CREDENTIALS, handled=False)


async def starttls_auth_and_implicit_tls(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> tuple[SessionResult, Authenticator, SessionResult]:
    authenticator = Authenticator()
    with mx_server(tls_context=server_tls, authenticator=authenticator) as server:
        smtp = SmtpSession(
            MX_NAME,
            MX_IP,
            server.port,
            helo="out.sender.test",
            timeout=5.0,
            tls_context=client_tls,
            credentials=CREDENTIALS,
        )
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
        assert server.handler.messages[0].tls and server.handler.messages[0].content == RAW
    with mx_server(ssl_context=server_tls) as server:
        smtp = SmtpSession(
            MX_NAME, MX_IP, server.port, helo="out.sender.test", timeout=5.0, tls="implicit", tls_context=client_tls
        )
        implicit = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    return result, authenticator, implicit


async def test_auth_plain_after_starttls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    result, authenticator, _ = await starttls_auth_and_implicit_tls(server_tls, client_tls)
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_verified is True
    assert authenticator.attempts == [("PLAIN", b"agent", b"right-password")]


def test_starttls_auth_and_implicit_tls_under_uvloop(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result, authenticator, implicit = runner.run(starttls_auth_and_implicit_tls(server_tls, client_tls))
    assert delivered(result, "rcpt@example.test"), result
    assert result.tls_version in ("TLSv1.2", "TLSv1.3") and result.tls_verified is True
    assert authenticator.attempts == [("PLAIN", b"agent", b"right-password")]
    assert delivered(implicit, "rcpt@example.test"), implicit
    assert implicit.tls_version is not None and implicit.tls_verified is True


async def test_auth_login_when_plain_is_not_offered(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    authenticator = Authenticator()
    with mx_server(tls_context=server_tls, authenticator=authenticator, auth_exclude_mechanism=["PLAIN"]) as server:
        smtp = SmtpSession(
            MX_NAME, MX_IP, server.port, helo="h.test", timeout=5.0, tls_context=client_tls, credentials=CREDENTIALS
        )
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert delivered(result, "rcpt@example.test"), result
    assert authenticator.attempts == [("LOGIN", b"agent", b"right-password")]


async def test_auth_refused_535_makes_the_session_unusable(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    authenticator = Authenticator()
    with mx_server(tls_context=server_tls, authenticator=authenticator) as server:
        smtp = SmtpSession(
            MX_NAME,
            MX_IP,
            server.port,
            helo="h.test",
            timeout=5.0,
            tls_context=client_tls,
            credentials=("agent", "wrong"),
        )
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        assert not smtp.connected
        await smtp.close()
    assert result.error == "AUTH failed: 535 5.7.8 Authentication credentials invalid"
    assert result.recipients == [] and server.handler.messages == []
    assert authenticator.attempts == [("PLAIN", b"agent", b"wrong")]


async def test_auth_in_clear_only_when_tls_none_says_so() -> None:
    authenticator = Authenticator()
    with mx_server(authenticator=authenticator, auth_require_tls=False) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="h.test", tls="none", credentials=CREDENTIALS)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
        refused = SmtpSession(MX_NAME, MX_IP, server.port, helo="h.test", credentials=CREDENTIALS)
        failed = await refused.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await refused.close()
    assert delivered(result, "rcpt@example.test"), result
    assert failed.error is not None and "not encrypted" in failed.error
    assert authenticator.attempts == [("PLAIN", b"agent", b"right-password")]  # the tls="none" session only
    assert len(server.handler.messages) == 1


async def test_credentials_are_not_sent_after_a_failed_handshake_falls_back_to_clear() -> None:
    broken = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    broken.set_ciphers("aNULL")
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    authenticator = Authenticator()
    with mx_server(tls_context=broken, authenticator=authenticator, auth_require_tls=False) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="h.test", timeout=5.0, credentials=CREDENTIALS)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
    assert result.error is not None and "not encrypted" in result.error
    assert result.tls_failure is not None and "clear" in result.tls_failure
    assert authenticator.attempts == [] and server.handler.messages == []


async def test_credentials_need_a_verified_certificate_in_opportunistic_mode(server_tls: ssl.SSLContext) -> None:
    authenticator = Authenticator()
    with mx_server(tls_context=server_tls, authenticator=authenticator) as server:
        smtp = SmtpSession(MX_NAME, MX_IP, server.port, helo="h.test", timeout=5.0, credentials=CREDENTIALS)
        result = await smtp.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await smtp.close()
        # tls="require" without require_verified_cert accepts the certificate, credentials included.
        required = SmtpSession(
            MX_NAME, MX_IP, server.port, helo="h.test", timeout=5.0, tls="require", credentials=CREDENTIALS
        )
        accepted = await required.send("agent@sender.test", ["rcpt@example.test"], RAW)
        await required.close()
    assert result.error is not None and "did not verify" in result.error
    assert delivered(accepted, "rcpt@example.test") and accepted.tls_verified is False
    assert authenticator.attempts == [("PLAIN", b"agent", b"right-password")]  # the tls="require" session only


# -- a real peer -----------------------------------------------------------------------------

SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:/sbin:/bin")


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on 127.0.0.7: a real SMTP server that accepts and discards everything."""
    # scripts/install-test-deps.sh installs postfix: a missing smtp-sink is a setup failure.
    assert SMTP_SINK is not None, "postfix smtp-sink not installed: run scripts/install-test-deps.sh"
    port = free_port("127.0.0.7")
    command = [SMTP_SINK, f"127.0.0.7:{port}", "100"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.7", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=5)


async def test_delivery_to_postfix_smtp_sink(smtp_sink: int) -> None:
    smtp = SmtpSession("sink.test", "127.0.0.7", smtp_sink, helo="out.sender.test", timeout=5.0)
    first = await smtp.send("agent@sender.test", ["a@sink.test", "b@sink.test"], RAW)
    second = await smtp.send("agent@sender.test", ["c@sink.test"], RAW)
    await smtp.close()
    assert first.error is None, first.error
    assert [r.reply.code for r in first.recipients] == [250, 250]
    assert first.data_reply is not None and first.data_reply.code == 250
    assert delivered(second, "c@sink.test")
    assert smtp.pipelining is False  # closed: nothing is known any more


async def test_pipelined_delivery_to_postfix_smtp_sink(smtp_sink: int) -> None:
    smtp = SmtpSession("sink.test", "127.0.0.7", smtp_sink, helo="out.sender.test", timeout=5.0, tls="none")
    results = [await smtp.send("agent@sender.test", [f"{i}@sink.test", "x@sink.test"], RAW) for i in range(50)]
    assert smtp.pipelining  # smtp-sink offers PIPELINING
    await smtp.close()
    for result in results:
        assert result.error is None, result.error
        assert [r.reply.code for r in result.recipients] == [250, 250]
        assert result.data_reply is not None and result.data_reply.code == 250
