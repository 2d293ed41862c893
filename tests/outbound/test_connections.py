"""Pooled outbound sessions: several messages to one host share a connection, a closed idle one is
replaced without a failed attempt, and the per-host cap holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from agentpost.net.dns import FakeResolver
from agentpost.outbound.connections import ConnectionPool
from agentpost.outbound.deliver import DeliverySettings, MxCache, deliver
from serverproc import free_port

IP = "127.0.0.11"


class Counting:
    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.transports: list[Any] = []
        self.active = 0
        self.most_active = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.append(session.peer)
        self.transports.append(server.transport)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0.05)
        self.active -= 1
        return "250 2.0.0 OK"


@pytest.fixture
def peer() -> Iterator[tuple[Counting, int]]:
    handler = Counting()
    port = free_port(IP)
    controller = Controller(handler, hostname=IP, port=port)
    controller.start()
    handler.loop = controller.loop
    try:
        yield handler, port
    finally:
        controller.stop()


def _setup(port: int) -> tuple[FakeResolver, DeliverySettings]:
    resolver = FakeResolver({"y.test": {"MX": [(10, "mx.y.test")]}, "mx.y.test": {"A": [IP]}})
    return resolver, DeliverySettings(helo="out.x.test", port=port, timeout=10, tls="none")


RAW = b"From: a@x.test\r\nTo: p@y.test\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_messages_to_one_host_reuse_one_connection(peer: tuple[Counting, int]) -> None:
    handler, port = peer
    resolver, settings = _setup(port)
    pool, cache = ConnectionPool(per_host=5), MxCache()
    try:
        for _ in range(5):
            result = await deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool, cache)
            assert result.replies["p@y.test"].code == 250
    finally:
        await pool.close()
    assert len(handler.peers) == 5 and len(set(handler.peers)) == 1
    assert resolver.queries.count(("y.test", "MX")) == 1  # the MX answer was reused too


async def test_concurrent_deliveries_respect_the_per_host_cap(peer: tuple[Counting, int]) -> None:
    handler, port = peer
    resolver, settings = _setup(port)
    pool = ConnectionPool(per_host=3)
    try:
        results = await asyncio.gather(
            *(deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool) for _ in range(12))
        )
    finally:
        await pool.close()
    assert all(r.replies["p@y.test"].code == 250 for r in results)
    assert handler.most_active <= 3
    assert len(set(handler.peers)) <= 3


async def test_an_idle_connection_the_server_closed_is_replaced_without_a_failure(
    peer: tuple[Counting, int],
) -> None:
    handler, port = peer
    resolver, settings = _setup(port)
    pool = ConnectionPool(per_host=1)
    try:
        await deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool)
        # The receiver drops the idle session (a restart, or its idle timeout).
        assert handler.loop is not None
        handler.loop.call_soon_threadsafe(handler.transports[0].close)
        await asyncio.sleep(0.1)
        result = await deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool)
    finally:
        await pool.close()
    assert result.replies["p@y.test"].code == 250
    assert [s.error for s in result.sessions] == [None]
    assert len(handler.peers) == 2


async def test_a_sending_domain_with_its_own_source_address_connects_from_it(peer: tuple[Counting, int]) -> None:
    handler, port = peer
    resolver, settings = _setup(port)
    pool = ConnectionPool()
    try:
        await deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool, None, "127.0.0.13")
        await deliver(resolver, settings, "y.test", "a@x.test", ["p@y.test"], RAW, False, pool, None, "127.0.0.14")
    finally:
        await pool.close()
    # Two sources, two sessions: a pooled session is never reused for another source address.
    assert [ip for ip, _ in handler.peers] == ["127.0.0.13", "127.0.0.14"]
