"""Real-time across nodes: a WebSocket open on one `agentpost serve` sees mail that another
`serve` on the same PostgreSQL database received, within a second (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentmail import AsyncAgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.websockets.types import Subscribe

from mailclient import send_raw, setup_inbox
from serverproc import AgentpostServer

pytestmark = pytest.mark.postgresql


async def test_websocket_on_node_1_sees_mail_received_by_node_2_within_one_second(
    tmp_path: Path, postgres: Any
) -> None:
    url = str(postgres.create_database("rt" + uuid.uuid4().hex[:12]))
    shared = {"AGENTPOST_SECRET_KEY": secrets.token_urlsafe(32), "AGENTPOST_MX_PROCESSES": "1"}
    nodes = [AgentpostServer(tmp_path / f"node{i}", database_url=url, extra_env=shared) for i in (1, 2)]
    nodes[0].setup()
    nodes[0].start()
    nodes[1].data_dir.mkdir(parents=True)
    nodes[1].cli("init")
    nodes[1].start()
    try:
        with nodes[0].client() as http:
            inbox = setup_inbox(http, f"live@rt{uuid.uuid4().hex[:6]}.test")
        ws_url = nodes[0].http_url.replace("http://", "ws://")
        client = AsyncAgentMail(
            api_key=nodes[0].api_key, environment=AgentMailEnvironment(http=nodes[0].http_url, websockets=ws_url)
        )
        delays: list[float] = []
        async with client.websockets.connect() as socket:
            await socket.send_subscribe(Subscribe(event_types=["message.received"], inbox_ids=[inbox]))
            assert (await asyncio.wait_for(socket.recv(), 10)).type == "subscribed"
            for n in range(10):
                message_id = f"<node2-{n}-{uuid.uuid4().hex[:6]}@remote.test>"
                raw = f"Message-ID: {message_id}\r\nSubject: {n}\r\n\r\nhello\r\n".encode()
                # Node 2's MX: its 250 means committed; node 1 has never seen this message.
                code, _ = await asyncio.to_thread(
                    send_raw, nodes[1].mx_host, nodes[1].mx_port, "a@remote.test", [inbox], raw
                )
                acknowledged = time.monotonic()
                assert code == 250
                event = await asyncio.wait_for(socket.recv(), 5)
                delays.append(time.monotonic() - acknowledged)
                assert event.event_type == "message.received"
                assert event.message.message_id == message_id
        print(
            f"\nnode 2 250 -> node 1 WebSocket: median {statistics.median(delays) * 1000:.1f} ms, "
            f"max {max(delays) * 1000:.1f} ms over {len(delays)} messages"
        )
        assert max(delays) < 1.0
    finally:
        for node in nodes:
            node.stop()
