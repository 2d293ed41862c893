"""The outbound SMTP wire: pipelining (RFC 2920), reply parsing (RFC 5321 §4.2) and hostile servers.

The peer is a small scripted server on 127.0.0.4 that answers from a table and records every read as it
arrived, so that tests can see which commands travelled together.
"""

from __future__ import annotations

import asyncio
import base64
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvloop

from agentpost.net.smtpclient import MAX_REPLY, SessionResult, SmtpSession

MX_IP = "127.0.0.4"
MX_NAME = "mx.example.test"
RAW = b"From: a@sender.test\r\nSubject: hi\r\n\r\n.dot first\r\nbody\r\n"
STUFFED = b"From: a@sender.test\r\nSubject: hi\r\n\r\n..dot first\r\nbody\r\n.\r\n"


@dataclass
class Script:
    """What the scripted server answers, and what it saw."""

    ehlo: list[str] = field(default_factory=lambda: ["PIPELINING", "8BITMIME", "SIZE 10000000"])
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply, "\r\n" between lines; default 250
    data_without_rcpt: str = "554 5.5.1 Error: no valid recipients"
    end_of_data: str = "250 2.0.0 Ok: queued as SCRIPT"
    starttls: str = "454 4.7.0 TLS not available"
    chunks: list[bytes] = field(default_factory=list)  # every read, as it arrived
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # DATA payloads as sent (dot-stuffed, with ".\r\n")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        buffer = b""
        rcpts = 0
        in_data = False
        while chunk := await reader.read(65536):
            self.chunks.append(chunk)
            buffer += chunk
            out: list[str] = []  # replies to one read go out in one write, as Postfix does
            closing = False
            while not closing:
                if in_data:
                    end = 3 if buffer.startswith(b".\r\n") else buffer.find(b"\r\n.\r\n") + 5
                    if end < 5 and end != 3:
                        break
                    self.messages.append(buffer[:end])
                    buffer = buffer[end:]
                    in_data = False
                    out.append(self.end_of_data if rcpts else "554 5.5.1 No valid recipients")
                    rcpts = 0
                    continue
                line, crlf, rest = buffer.partition(b"\r\n")
                if not crlf:
                    break
                buffer = rest
                command = line.decode()
                self.commands.append(command)
                verb = command[:4].upper()
                if verb == "EHLO":
                    lines = ["scripted", *self.ehlo]
                    out.append("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}")
                elif verb == "MAIL":
                    out.append("250 2.1.0 Ok")
                elif verb == "RCPT":
                    address = command[8:].strip("<>")
                    reply = self.rcpt.get(address, "250 2.1.5 Ok")
                    rcpts += reply.startswith("25")
                    out.append(reply)
                    closing = reply.startswith("421")
                elif verb == "DATA":
                    reply = "354 End data with <CR><LF>.<CR><LF>" if rcpts else self.data_without_rcpt
                    in_data = reply.startswith("354")
                    out.append(reply)
                elif verb == "RSET":
                    rcpts = 0
                    out.append("250 2.0.0 Ok")
                elif verb == "STAR":
                    out.append(self.starttls)
                elif verb == "QUIT":
                    out.append("221 2.0.0 Bye")
                    closing = True
                else:
                    out.append("502 5.5.2 Error: command not recognized")
            if out:
                writer.write("".join(f"{reply}\r\n" for reply in out).encode())
            if closing:
                break
        writer.close()


@asynccontextmanager
async def scripted(
    script: Script | None = None,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[Script, int]]:
    script = script or Script()
    server = await asyncio.start_server(handler or script.serve, MX_IP, 0)
    try:
        yield script, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def session(port: int, **kwargs: object) -> SmtpSession:
    params: dict[str, object] = {"helo": "out.sender.test", "timeout": 5.0, "tls": "none"} | kwargs
    return SmtpSession(MX_NAME, MX_IP, port, **params)  # type: ignore[arg-type]


def codes(result: SessionResult) -> list[int]:
    return [r.reply.code for r in result.recipients]


# -- pipelining ------------------------------------------------------------------------------


async def pipelined_transaction_with_a_refusal_in_the_middle() -> None:
    script = Script(rcpt={"gone@example.test": "550 5.1.1 <gone@example.test>: no such user"})
    async with scripted(script) as (_, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["one@example.test", "gone@example.test", "two@example.test"], RAW)
        assert smtp.pipelining
        await smtp.close()
    assert result.error is None, result.error
    assert [(r.rcpt, r.reply.code, r.reply.enhanced) for r in result.recipients] == [
        ("one@example.test", 250, "2.1.5"),
        ("gone@example.test", 550, "5.1.1"),
        ("two@example.test", 250, "2.1.5"),
    ]
    assert result.data_reply is not None and result.data_reply.code == 250
    # C: MAIL FROM / RCPT TO x3 / DATA arrive in one read; the message follows the 354.
    (group,) = [chunk for chunk in script.chunks if b"MAIL FROM" in chunk]
    assert group == (
        b"MAIL FROM:<a@sender.test> SIZE=%d\r\n"
        b"RCPT TO:<one@example.test>\r\nRCPT TO:<gone@example.test>\r\nRCPT TO:<two@example.test>\r\n"
        b"DATA\r\n" % len(RAW)
    )
    assert script.messages == [STUFFED]


async def test_pipelined_group_goes_in_one_write_and_replies_match_recipients() -> None:
    await pipelined_transaction_with_a_refusal_in_the_middle()


def test_pipelined_transaction_under_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(pipelined_transaction_with_a_refusal_in_the_middle())


async def test_no_accepted_recipient_sends_no_body_and_the_next_group_starts_with_rset() -> None:
    script = Script(rcpt={"gone@example.test": "550 5.1.1 no such user"})
    async with scripted(script) as (_, port):
        smtp = session(port)
        refused = await smtp.send("a@sender.test", ["gone@example.test"], RAW)
        again = await smtp.send("a@sender.test", ["ok@example.test"], RAW)
        await smtp.close()
    assert refused.error is None and refused.data_reply is None and codes(refused) == [550]
    assert again.error is None and codes(again) == [250]
    assert again.data_reply is not None and again.data_reply.code == 250
    assert script.messages == [STUFFED]  # only the second message's body was sent
    assert script.commands[1:] == [
        f"MAIL FROM:<a@sender.test> SIZE={len(RAW)}",
        "RCPT TO:<gone@example.test>",
        "DATA",  # 554: no body follows
        "RSET",
        f"MAIL FROM:<a@sender.test> SIZE={len(RAW)}",
        "RCPT TO:<ok@example.test>",
        "DATA",
        "QUIT",
    ]
    assert any(chunk.startswith(b"RSET\r\nMAIL FROM:") for chunk in script.chunks)  # RSET pipelined too


async def test_data_accepted_without_any_recipient_gets_an_empty_message() -> None:
    # RFC 2920 §3.1: a server may answer 354 to a pipelined DATA after refusing every RCPT;
    # the client then sends the terminating dot alone, never the message.
    script = Script(rcpt={"gone@example.test": "550 5.1.1 no such user"}, data_without_rcpt="354 go ahead")
    async with scripted(script) as (_, port):
        smtp = session(port)
        refused = await smtp.send("a@sender.test", ["gone@example.test"], RAW)
        again = await smtp.send("a@sender.test", ["ok@example.test"], RAW)
        await smtp.close()
    assert refused.error is None and refused.data_reply is None and codes(refused) == [550]
    assert script.messages == [b".\r\n", STUFFED]
    assert again.data_reply is not None and again.data_reply.code == 250


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    script = Script(ehlo=["8BITMIME"])
    async with scripted(script) as (_, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["one@example.test", "two@example.test"], RAW)
        assert not smtp.pipelining
        await smtp.close()
    assert result.error is None and codes(result) == [250, 250]
    assert [c for c in script.chunks if not c.startswith(b"From:")] == [
        b"EHLO out.sender.test\r\n",
        b"MAIL FROM:<a@sender.test>\r\n",
        b"RCPT TO:<one@example.test>\r\n",
        b"RCPT TO:<two@example.test>\r\n",
        b"DATA\r\n",
        b"QUIT\r\n",
    ]


async def test_421_answers_every_recipient_not_answered_yet_and_ends_the_session() -> None:
    script = Script(rcpt={"b@example.test": "421 4.3.2 Service shutting down"})
    async with scripted(script) as (_, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["a@example.test", "b@example.test", "c@example.test"], RAW)
        assert not smtp.connected
        await smtp.close()
    assert result.error is None and codes(result) == [250, 421, 421]
    assert result.data_reply is None and script.messages == []


async def test_last_used_moves_with_each_transaction() -> None:
    async with scripted() as (_, port):
        smtp = session(port)
        before = time.monotonic()
        await smtp.send("a@sender.test", ["a@example.test"], RAW)
        first = smtp.last_used
        await smtp.send("a@sender.test", ["a@example.test"], RAW)
        await smtp.close()
    assert before <= first <= smtp.last_used <= time.monotonic()


# -- the message on the wire -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, wire",
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),  # CRLF already: byte for byte
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # final CRLF added
        (b"a\nb\rc\r\nd\n", b"a\r\nb\r\nc\r\nd\r\n.\r\n"),  # bare LF and CR become CRLF
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),  # no smuggled "\n.\n" end of data
        (b".\r\n..\r\n.x", b"..\r\n...\r\n..x\r\n.\r\n"),  # RFC 5321 §4.5.2 dot-stuffing
        (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
async def test_message_is_dot_stuffed_and_crlf_normalised(raw: bytes, wire: bytes) -> None:
    async with scripted() as (script, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["a@example.test"], raw)
        await smtp.close()
    assert result.error is None, result.error
    assert script.messages == [wire]


# -- replies ---------------------------------------------------------------------------------


async def test_multi_line_replies_are_joined_and_matched_to_their_command() -> None:
    script = Script(
        rcpt={"gone@example.test": "550-5.1.1 The mailbox\r\n550-5.1.1 does not\r\n550 5.1.1 exist"},
        end_of_data="250-2.0.0 Ok\r\n250 2.0.0 queued as MULTI",
    )
    async with scripted(script) as (_, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["gone@example.test", "ok@example.test"], RAW)
        await smtp.close()
    gone, ok = result.recipients
    assert (gone.reply.code, gone.reply.enhanced) == (550, "5.1.1")
    assert gone.reply.text == "5.1.1 The mailbox\n5.1.1 does not\n5.1.1 exist"
    assert ok.reply.code == 250
    assert result.data_reply is not None and result.data_reply.text == "2.0.0 Ok\n2.0.0 queued as MULTI"


async def endless_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 ")
    await endless(writer, b"x" * 65536)


async def endless_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await endless(writer, b"220-more to come\r\n" * 4096)


async def endless(writer: asyncio.StreamWriter, block: bytes) -> None:
    try:
        for _ in range(10_000):  # 300+ MiB: far more than a client may hold
            writer.write(block)
            await writer.drain()
    except OSError:
        pass  # the client hung up, as it should
    writer.close()


@pytest.mark.parametrize("hostile", [endless_line, endless_lines])
async def test_endless_reply_is_an_error_not_a_hang_nor_a_memory_sink(
    hostile: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with scripted(handler=hostile) as (_, port):
        smtp = session(port, timeout=5.0)
        tracemalloc.start()
        try:
            started = time.monotonic()
            result = await smtp.send("a@sender.test", ["a@example.test"], RAW)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await smtp.close()
    assert result.error is not None and f"longer than {MAX_REPLY} bytes" in result.error
    assert elapsed < 2.0
    assert peak < 2 * 1024 * 1024  # a few buffers' worth, not the hundreds of megabytes the server sends


@pytest.mark.parametrize("greeting", [b"hello there\r\n", b"2x0 nope\r\n", b"\r\n"])
async def test_malformed_reply_is_an_error(greeting: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await reader.read()
        writer.close()

    async with scripted(handler=serve) as (_, port):
        smtp = session(port)
        result = await smtp.send("a@sender.test", ["a@example.test"], RAW)
        await smtp.close()
    assert result.error is not None and "malformed reply" in result.error


async def test_unsolicited_reply_while_idle_makes_the_session_reconnect() -> None:
    # A server that times an idle connection out says so (421) and leaves: a pooled session must not
    # read that as the reply to its next MAIL.
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            writer.write(b"220 first\r\n")
            await reader.readline()  # EHLO
            writer.write(b"250-first\r\n250 PIPELINING\r\n")
            writer.write(b"421 4.4.2 Idle timeout\r\n")
            writer.close()
            return
        await Script().serve(reader, writer)

    async with scripted(handler=serve) as (_, port):
        smtp = session(port)
        await smtp.connect()
        await asyncio.sleep(0.1)
        assert not smtp.connected
        result = await smtp.send("a@sender.test", ["a@example.test"], RAW)
        await smtp.close()
    assert result.error is None and codes(result) == [250] and connections == 2


async def test_a_transaction_cancelled_half_way_never_reuses_the_connection() -> None:
    async def silent_after_ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow\r\n")
        await reader.readline()
        writer.write(b"250 PIPELINING\r\n")  # a one-line EHLO reply: no extensions at all
        await reader.read()  # and never a reply to MAIL
        writer.close()

    async with scripted(handler=silent_after_ehlo) as (_, port):
        smtp = session(port, timeout=30.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(smtp.send("a@sender.test", ["a@example.test"], RAW), 0.3)
        assert not smtp.connected
        await smtp.close()


# -- STARTTLS and AUTH against a scripted peer ------------------------------------------------


async def test_data_injected_after_the_starttls_reply_is_refused() -> None:
    # RFC 7457 §2.1 (CVE-2011-0411): whatever follows "220" in the same read came in clear.
    script = Script(ehlo=["PIPELINING", "STARTTLS"], starttls="220 2.0.0 Go ahead\r\n250 injected")
    async with scripted(script) as (_, port):
        required = session(port, tls="require")
        failed = await required.send("a@sender.test", ["a@example.test"], RAW)
        await required.close()
        opportunistic = session(port, tls="opportunistic")
        clear = await opportunistic.send("a@sender.test", ["a@example.test"], RAW)
        await opportunistic.close()
    assert failed.error is not None and "TLS required" in failed.error and "after its 220" in failed.error
    assert clear.error is None and clear.tls_version is None
    assert clear.tls_failure is not None and "after its 220" in clear.tls_failure
    assert script.messages == [STUFFED]


async def test_credentials_are_never_sent_in_clear_in_opportunistic_mode() -> None:
    script = Script(ehlo=["PIPELINING", "AUTH PLAIN LOGIN", "AUTH=LOGIN"])
    async with scripted(script) as (_, port):
        smtp = session(port, tls="opportunistic", credentials=("agent", "s3cret-password"))
        result = await smtp.send("a@sender.test", ["a@example.test"], RAW)
        await smtp.close()
    assert result.error is not None and "not encrypted" in result.error
    assert result.recipients == [] and script.messages == []
    assert not any(command.upper().startswith(("AUTH", "MAIL")) for command in script.commands)
    everything = b"".join(script.chunks)
    plain, login = base64.b64encode(b"\0agent\0s3cret-password"), base64.b64encode(b"s3cret-password")
    assert b"s3cret" not in everything and plain not in everything and login not in everything
