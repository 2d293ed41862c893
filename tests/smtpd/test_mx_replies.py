"""How the MX writes its replies: a multiline reply leaves in one write (pure logic, a recording writer)."""

from __future__ import annotations

from typing import Any

from agentpost.smtpd.mx import MxSession


class _Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        pass


def _session() -> tuple[Any, _Writer]:
    session: Any = MxSession.__new__(MxSession)  # only what push() touches
    writer = _Writer()
    session._writer = writer
    session._continued = b""
    session.session = type("S", (), {"peer": ("127.0.0.1", 1)})()
    return session, writer


async def test_the_lines_of_a_multiline_reply_leave_in_one_write_with_the_last() -> None:
    session, writer = _session()
    for line in ("250-mx.example.test", "250-SIZE 1000", "250-PIPELINING", "250 HELP"):
        await session.push(line)
    assert writer.writes == [b"250-mx.example.test\r\n250-SIZE 1000\r\n250-PIPELINING\r\n250 2.0.0 HELP\r\n"]


async def test_single_line_replies_each_leave_at_once() -> None:
    session, writer = _session()
    await session.push("250 OK")
    await session.push("354 End data with <CR><LF>.<CR><LF>")
    assert writer.writes == [b"250 2.0.0 OK\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"]
