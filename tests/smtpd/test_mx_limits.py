"""MX self-protection and failure handling, against a real server process or a real session."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from pathlib import Path
from typing import Any

from agentpost.inbound.checks import RateLimiter, Route
from agentpost.smtpd.mx import MxHandler, MxServer
from mailclient import setup_inbox
from serverproc import AgentpostServer


def test_connections_over_the_per_ip_limit_get_421_and_messages_over_the_rate_get_450(tmp_path: Path) -> None:
    server = AgentpostServer(
        tmp_path / "data",
        extra_env={
            "AGENTPOST_MX_MAX_CONNECTIONS_PER_IP": "2",
            "AGENTPOST_MX_MAX_MESSAGES_PER_IP_PER_MINUTE": "3",
            "AGENTPOST_MX_PROCESSES": "1",
        },
    )
    server.setup()
    server.start()
    try:
        with server.client() as http:
            inbox = setup_inbox(http, "limits@limits.example.test")
        first = smtplib.SMTP(server.mx_host, server.mx_port, timeout=10)
        second = smtplib.SMTP(server.mx_host, server.mx_port, timeout=10)
        with socket.create_connection((server.mx_host, server.mx_port), timeout=10) as third:
            greeting = third.recv(512)
        assert greeting.startswith(b"421 4.7.0"), greeting
        first.quit()
        second.quit()
        with smtplib.SMTP(server.mx_host, server.mx_port, timeout=10) as client:
            client.ehlo("rate.remote.test")
            replies = []
            for n in range(4):
                code, message = client.mail("a@remote.test")
                replies.append((code, message[:5]))
                if code == 250:
                    client.rcpt(inbox)
                    client.data(f"Subject: {n}\r\n\r\nx\r\n".encode())
        assert replies[:3] == [(250, b"2.1.0")] * 3
        assert replies[3] == (450, b"4.7.1")
    finally:
        server.stop()


class _Routes:
    async def route(self, rcpt: str) -> Route:
        return Route(rcpt.lower(), "org")


class _Failing:
    async def receive(self, *args: Any) -> Any:
        raise RuntimeError("disk on fire: internal detail")


async def test_an_internal_error_reaches_the_peer_as_451_4_3_0_without_details() -> None:
    handler = MxHandler(_Routes(), _Failing(), RateLimiter(10, 100), 10)  # type: ignore[arg-type]
    server = MxServer(handler, "127.0.0.1", 0, "mx.test", 10_000, None, 30)
    await server.start()
    try:

        def talk() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.ehlo("x.test")
                client.mail("a@remote.test")
                client.rcpt("b@hosted.test")
                try:
                    return client.data(b"Subject: x\r\n\r\nbody\r\n")
                except smtplib.SMTPDataError as exc:
                    return exc.smtp_code, exc.smtp_error

        code, message = await asyncio.to_thread(talk)
    finally:
        await server.stop()
    assert (code, message[:5]) == (451, b"4.3.0")
    assert b"disk" not in message and b"RuntimeError" not in message
