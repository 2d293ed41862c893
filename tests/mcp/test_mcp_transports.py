"""MCP over real transports: `agentpost mcp` on stdio and /mcp on a running `agentpost serve`, with
mail sent to the server's MX."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from mailclient import send_raw, setup_inbox, wait_list
from serverproc import AGENTPOST, AgentpostServer


def data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def stdio(server: AgentpostServer, key: str) -> Client:
    env = {**server.env, "AGENTPOST_API_KEY": key}
    return Client(StdioServerParameters(command=AGENTPOST[0], args=[*AGENTPOST[1:], "mcp"], env=env))


def http(server: AgentpostServer, key: str) -> Client:
    transport = httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(90.0))
    return Client(streamable_http_client(server.http_url + "/mcp", http_client=transport))


async def converse(client: Client, server: AgentpostServer, inbox: str) -> None:
    """Mail from outside arrives at the MX -> wait_for_message returns it -> get_thread -> reply."""
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"wait_for_message", "get_thread", "reply_to_message"} <= tools
    # A point in time before the mail is sent: nothing sent after it can be missed.
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    waiting = asyncio.create_task(
        client.call_tool("wait_for_message", {"inbox_id": inbox, "after_timestamp": since, "timeout": 40})
    )
    message_id = f"<hello-{uuid.uuid4().hex[:8]}@remote.test>"
    raw = (
        f"From: Bob <bob@remote.test>\r\nTo: {inbox}\r\nSubject: Hello agent\r\nMessage-ID: {message_id}\r\n"
        "\r\nPlease reply with the status.\r\n"
    ).encode()
    code, _ = await asyncio.to_thread(send_raw, server.mx_host, server.mx_port, "bob@remote.test", [inbox], raw)
    assert code == 250
    waited = data(await asyncio.wait_for(waiting, 60))
    [message] = waited["messages"]
    assert message["message_id"] == message_id and "Please reply" in message["text"]
    # The verdict rides beside the content (loopback is a trusted network by default: "internal").
    assert "received" in message["labels"] and message["auth"]["verdict"] == "internal"

    thread = data(await client.call_tool("get_thread", {"inbox_id": inbox, "thread_id": message["thread_id"]}))
    assert [m["message_id"] for m in thread["messages"]] == [message_id]
    replied = data(
        await client.call_tool(
            "reply_to_message",
            {"inbox_id": inbox, "message_id": message_id, "reply_all": False, "text": "Status: all good."},
        )
    )
    assert replied["thread_id"] == message["thread_id"]
    with server.client() as api:
        sent = wait_list(api, f"/v0/inboxes/{inbox}/messages", "messages", 1, labels="sent")
    assert sent[0]["subject"] == "Re: Hello agent" and sent[0]["to"] == ["Bob <bob@remote.test>"]
    assert sent[0]["in_reply_to"] == message_id


async def test_stdio_agentpost_mcp_completes_a_conversation(shared_server: AgentpostServer) -> None:
    with shared_server.client() as api:
        inbox = setup_inbox(api, "stdio@mcp-stdio.example.test")
    async with stdio(shared_server, shared_server.api_key) as client:
        await converse(client, shared_server, inbox)


async def test_streamable_http_mcp_completes_a_conversation(shared_server: AgentpostServer) -> None:
    with shared_server.client() as api:
        inbox = setup_inbox(api, "http@mcp-http.example.test")
    async with http(shared_server, shared_server.api_key) as client:
        await converse(client, shared_server, inbox)


def test_stdio_with_a_wrong_api_key_exits_with_a_clear_error(shared_server: AgentpostServer) -> None:
    result = subprocess.run(
        [*AGENTPOST, "mcp", "--api-key", "ap_not_a_key"],
        env=shared_server.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "API key refused: invalid API key" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # stdout is the protocol channel
    missing = subprocess.run(
        [*AGENTPOST, "mcp"],
        env={k: v for k, v in shared_server.env.items() if k != "AGENTPOST_API_KEY"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "AGENTPOST_API_KEY" in missing.stderr


async def test_http_mcp_with_a_wrong_or_missing_key_is_401_with_the_error_body(
    shared_server: AgentpostServer,
) -> None:
    url = shared_server.http_url + "/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"authorization": "Bearer ap_not_a_key"}):
        async with httpx.AsyncClient() as plain:
            response = await plain.post(
                url, json=body, headers={"accept": "application/json, text/event-stream", **headers}
            )
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["name"] == "UnauthorizedError"
    assert response.json()["message"] == "invalid API key"
    # The SDK reports any HTTP failure as a generic error: the 401 body above is what a person reads.
    with pytest.raises(Exception):  # noqa: B017
        async with http(shared_server, "ap_not_a_key") as client:
            await client.list_tools()


async def test_http_mcp_inbox_scoped_key_sees_only_its_inbox(shared_server: AgentpostServer) -> None:
    with shared_server.client() as api:
        mine = setup_inbox(api, "mine@mcp-scope.example.test")
        other = setup_inbox(api, "other@mcp-scope.example.test")
        key = api.post("/v0/api-keys", json={"name": "mcp scoped", "inbox_id": mine}).json()["api_key"]
    async with http(shared_server, key) as client:
        listed = data(await client.call_tool("list_inboxes", {}))
        assert [i["inbox_id"] for i in listed["inboxes"]] == [mine]
        refused = await client.call_tool("list_threads", {"inbox_id": other})
        assert refused.is_error and "inbox not found" in str(refused.content[0])


def test_agentpost_mcp_help_names_the_key_options() -> None:
    result = subprocess.run([sys.executable, "-m", "agentpost", "mcp", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--api-key" in result.stdout and "AGENTPOST_API_KEY" in result.stdout
