"""The MCP tool set in-process (the SDK's in-memory client): a conversation, scopes and argument errors."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent

from agentpost import schemas
from agentpost.config import Config, DatabaseConfig, DnsConfig
from agentpost.errors import Unauthorized
from agentpost.mcp.tools import ToolContext, build_server
from agentpost.serve import standalone_context
from agentpost.service import domains as domain_service
from agentpost.service import drafts as draft_service
from agentpost.service import inboxes as inbox_service
from agentpost.service import keys as key_service
from agentpost.service import messages as message_service
from agentpost.service.auth import Principal, authenticate
from agentpost.service.context import Context

TOOLS = {
    "list_inboxes",
    "create_inbox",
    "list_threads",
    "get_thread",
    "send_message",
    "reply_to_message",
    "forward_message",
    "create_draft",
    "send_draft",
    "get_attachment",
    "wait_for_message",
}


@pytest.fixture
async def ctx(tmp_path: Path, database_url: str) -> AsyncIterator[Context]:
    config = Config(
        hostname="mx.agentpost.test",
        data_dir=str(tmp_path / "data"),
        secret_key="test-secret-key",
        database=DatabaseConfig(url=database_url),
        dns=DnsConfig(servers=["127.0.0.1:9"]),  # loopback only; nothing answers
    )
    async with standalone_context(config) as context:
        who = await key_service.operator(context)
        await domain_service.add(context, who, schemas.CreateDomain(domain="corp.test"))
        for name in ("agent", "alice", "other"):
            await inbox_service.create(context, who, schemas.CreateInbox(username=name, domain="corp.test"))
        yield context


def keyed(ctx: Context, api_key: str) -> Any:
    async def principal(_: ToolContext) -> Principal:
        return await authenticate(ctx, api_key)

    return build_server(ctx, principal)


async def org_key(ctx: Context) -> str:
    return (await key_service.bootstrap_key(ctx, "mcp-test")).api_key


def data(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    """The error the model reads, without the SDK's "Error executing tool <name>: " prefix."""
    assert result.is_error
    first = result.content[0]
    assert isinstance(first, TextContent)
    assert "Traceback" not in first.text
    return first.text.split(": ", 1)[1] if first.text.startswith("Error executing tool") else first.text


async def test_tools_are_listed_and_content_tools_say_their_content_is_untrusted(ctx: Context) -> None:
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for name in ("list_threads", "get_thread", "get_attachment", "wait_for_message"):
        assert "untrusted third-party input" in (tools[name].description or ""), name
    # reply vs reply-all is an explicit, required choice.
    assert "reply_all" in (tools["reply_to_message"].input_schema.get("required") or [])
    assert tools["wait_for_message"].input_schema["properties"]["timeout"]["maximum"] == 60


async def test_mail_arrives_wait_returns_it_then_thread_and_reply(ctx: Context) -> None:
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        inboxes = data(await client.call_tool("list_inboxes", {}))["inboxes"]
        assert {i["inbox_id"] for i in inboxes} >= {"agent@corp.test", "alice@corp.test"}
        waiting = asyncio.create_task(
            client.call_tool("wait_for_message", {"inbox_id": "agent@corp.test", "timeout": 20})
        )
        await asyncio.sleep(0.3)
        # Through the inbound pipeline in this process (local delivery), as a hosted sender.
        alice = await key_service.operator(ctx)
        sent = await message_service.send(
            ctx,
            alice,
            "alice@corp.test",
            schemas.SendMessage(to="agent@corp.test", subject="Quarterly numbers", text="Can you send them?"),
            None,
        )
        waited = data(await asyncio.wait_for(waiting, 25))
        assert waited["timed_out"] is False and "untrusted" in waited["notice"]
        [message] = waited["messages"]
        assert message["subject"] == "Quarterly numbers" and "Can you send them?" in message["text"]
        assert message["from_verified"] is True and message["auth"]["verdict"] == "internal"
        assert message["thread_id"]

        thread = data(
            await client.call_tool("get_thread", {"inbox_id": "agent@corp.test", "thread_id": message["thread_id"]})
        )
        assert [m["message_id"] for m in thread["messages"]] == [message["message_id"]]

        replied = data(
            await client.call_tool(
                "reply_to_message",
                {
                    "inbox_id": "agent@corp.test",
                    "message_id": message["message_id"],
                    "reply_all": False,
                    "text": "Attached tomorrow.",
                },
            )
        )
        assert replied["thread_id"] == message["thread_id"]
        # The reply reached alice, threaded under her message.
        back = data(
            await client.call_tool(
                "wait_for_message", {"inbox_id": "alice@corp.test", "after_message_id": sent.message_id, "timeout": 10}
            )
        )
        [answer] = back["messages"]
        assert answer["subject"] == "Re: Quarterly numbers" and answer["in_reply_to"] == message["message_id"]
        assert answer["thread_id"] == sent.thread_id

        # Nothing newer than the reply: the wait times out, empty.
        idle = data(
            await client.call_tool(
                "wait_for_message",
                {"inbox_id": "alice@corp.test", "after_message_id": answer["message_id"], "timeout": 0.5},
            )
        )
        assert idle == {"notice": idle["notice"], "timed_out": True, "messages": []}


async def test_attachments_come_back_as_text_html_as_text_and_binary_as_metadata(ctx: Context) -> None:
    who = await key_service.operator(ctx)

    def attach(name: str, content_type: str, content: bytes) -> schemas.SendAttachment:
        return schemas.SendAttachment(
            filename=name, content_type=content_type, content=base64.b64encode(content).decode()
        )

    await message_service.send(
        ctx,
        who,
        "alice@corp.test",
        schemas.SendMessage(
            to="agent@corp.test",
            subject="files",
            text="see attached",
            attachments=[
                attach("notes.txt", "text/plain", "plain notes ünïcode".encode()),
                attach("page.html", "text/html", b"<html><body><h1>Title</h1><p>para</p></body></html>"),
                attach("image.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
            ],
        ),
        None,
    )
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        threads = data(await client.call_tool("list_threads", {"inbox_id": "agent@corp.test"}))["threads"]
        thread = data(
            await client.call_tool("get_thread", {"inbox_id": "agent@corp.test", "thread_id": threads[0]["thread_id"]})
        )
        [message] = thread["messages"]
        by_name = {a["filename"]: a for a in message["attachments"]}
        results = {}
        for name, meta in by_name.items():
            args = {"inbox_id": "agent@corp.test", "message_id": message["message_id"]}
            results[name] = data(
                await client.call_tool("get_attachment", {**args, "attachment_id": meta["attachment_id"]})
            )
    assert results["notes.txt"]["text"] == "plain notes ünïcode"
    assert "Title" in results["page.html"]["text"] and "<h1>" not in results["page.html"]["text"]
    assert "text" not in results["image.png"] and "not text" in results["image.png"]["note"]
    assert results["image.png"]["size"] == 72
    assert all(r["auth"] is not None and "untrusted" in r["notice"] for r in results.values())


async def test_a_draft_is_created_then_sent_and_the_recipient_gets_it(ctx: Context) -> None:
    started = datetime.now(UTC)
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        draft = data(
            await client.call_tool(
                "create_draft",
                {"inbox_id": "agent@corp.test", "to": ["alice@corp.test"], "subject": "Minutes", "text": "Notes."},
            )
        )
        assert draft["draft_id"].startswith("drf_") and draft["to"] == ["alice@corp.test"]
        assert draft["subject"] == "Minutes" and "send_status" not in draft
        sent = data(
            await client.call_tool("send_draft", {"inbox_id": "agent@corp.test", "draft_id": draft["draft_id"]})
        )
        assert sent["message_id"] and sent["thread_id"]
        since = {"after_timestamp": started.isoformat(), "timeout": 10}
        got = data(await client.call_tool("wait_for_message", {"inbox_id": "alice@corp.test", **since}))
        [message] = got["messages"]
        assert message["message_id"] == sent["message_id"] and message["subject"] == "Minutes"
        assert "Notes." in message["text"]

        # A reply draft takes recipients and subject from the message; send_at schedules it.
        reply = data(
            await client.call_tool(
                "create_draft",
                {
                    "inbox_id": "alice@corp.test",
                    "in_reply_to": message["message_id"],
                    "reply_all": False,
                    "text": "Thanks.",
                    "send_at": "2099-01-01T09:00:00Z",
                },
            )
        )
        assert reply["to"] == ["agent@corp.test"] and reply["subject"] == "Re: Minutes"
        assert reply["in_reply_to"] == message["message_id"] and reply["send_status"] == "scheduled"
        # A sent draft is gone.
        again = await client.call_tool("send_draft", {"inbox_id": "agent@corp.test", "draft_id": draft["draft_id"]})
        assert error_text(again) == "draft not found"


async def test_a_draft_sent_by_an_inbox_scoped_key_on_an_approval_inbox_waits_for_approval(ctx: Context) -> None:
    operator = await key_service.operator(ctx)
    req = schemas.CreateInbox(username="guarded", domain="corp.test", send_requires_approval=True)
    await inbox_service.create(ctx, operator, req)
    scoped = await key_service.create(ctx, operator, schemas.CreateApiKey(name="agent", inbox_id="guarded@corp.test"))
    async with Client(keyed(ctx, scoped.api_key)) as client:
        args = {"inbox_id": "guarded@corp.test", "to": ["alice@corp.test"], "subject": "Refund", "text": "$5,000"}
        draft = data(await client.call_tool("create_draft", args))
        held = data(
            await client.call_tool("send_draft", {"inbox_id": "guarded@corp.test", "draft_id": draft["draft_id"]})
        )
    assert held == {"draft_id": draft["draft_id"], "status": "pending_approval"}
    stored = await draft_service.get(ctx, operator, "guarded@corp.test", draft["draft_id"])
    assert stored.send_status == "pending_approval"
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        idle = data(await client.call_tool("wait_for_message", {"inbox_id": "alice@corp.test", "timeout": 0.5}))
    assert idle["timed_out"] is True


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"subject": "s", "text": "t"}, "a new draft needs `to` and `subject`"),
        ({"to": ["alice@corp.test"], "text": "t"}, "a new draft needs `to` and `subject`"),
        ({"to": ["alice@corp.test"], "subject": "s"}, "give the body as `text`"),
        (
            {"to": ["alice@corp.test"], "subject": "s", "text": "t", "reply_all": True},
            "reply_all goes with in_reply_to",
        ),
        ({"in_reply_to": "<x@y>", "reply_all": False, "subject": "s", "text": "t"}, "omit subject"),
        (
            {"in_reply_to": "<x@y>", "reply_all": False, "to": ["a@corp.test"], "cc": ["b@corp.test"], "text": "t"},
            "omit to, cc",
        ),
        ({"in_reply_to": "<x@y>", "text": "t"}, "a reply draft needs reply_all"),
        ({"in_reply_to": "<x@y>", "reply_all": False, "text": "t"}, "message not found"),
        (
            {"to": ["alice@corp.test"], "subject": "s", "text": "t", "send_at": "2099-01-01T09:00:00"},
            "send_at needs a timezone",
        ),
    ],
)
async def test_create_draft_takes_only_a_new_draft_or_a_reply_draft(
    ctx: Context, args: dict[str, Any], expected: str
) -> None:
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        result = await client.call_tool("create_draft", {"inbox_id": "agent@corp.test", **args})
    assert expected in error_text(result)


async def test_wrong_api_key_is_a_short_tool_error(ctx: Context) -> None:
    async with Client(keyed(ctx, "ap_not_a_key")) as client:
        result = await client.call_tool("list_inboxes", {})
    assert error_text(result) == "invalid API key"


async def test_mutually_exclusive_and_missing_arguments_are_refused_clearly(ctx: Context) -> None:
    async with Client(keyed(ctx, await org_key(ctx))) as client:
        both = await client.call_tool(
            "wait_for_message",
            {"inbox_id": "agent@corp.test", "after_message_id": "<x@y>", "after_timestamp": "2026-01-01T00:00:00Z"},
        )
        assert error_text(both) == "give after_message_id or after_timestamp, not both"
        naive = await client.call_tool(
            "wait_for_message", {"inbox_id": "agent@corp.test", "after_timestamp": "2026-01-01T00:00:00"}
        )
        assert "timezone" in error_text(naive)
        too_long = await client.call_tool("wait_for_message", {"inbox_id": "agent@corp.test", "timeout": 600})
        assert "timeout" in error_text(too_long)
        no_body = await client.call_tool(
            "send_message", {"inbox_id": "agent@corp.test", "to": ["alice@corp.test"], "subject": "empty"}
        )
        assert "`text`" in error_text(no_body) and "`html`" in error_text(no_body)
        no_choice = await client.call_tool(
            "reply_to_message", {"inbox_id": "agent@corp.test", "message_id": "<x@y>", "text": "hi"}
        )
        assert "reply_all" in error_text(no_choice)
        unknown = await client.call_tool(
            "reply_to_message", {"inbox_id": "agent@corp.test", "message_id": "<x@y>", "reply_all": True, "text": "hi"}
        )
        assert error_text(unknown) == "message not found"
        bad_address = await client.call_tool(
            "send_message", {"inbox_id": "agent@corp.test", "to": ["not an address"], "subject": "s", "text": "t"}
        )
        assert "to[0]" in error_text(bad_address) and "Traceback" not in error_text(bad_address)


async def test_an_inbox_scoped_key_cannot_see_another_inbox(ctx: Context) -> None:
    who = await key_service.operator(ctx)
    scoped = await key_service.create(ctx, who, schemas.CreateApiKey(name="agent only", inbox_id="agent@corp.test"))
    await message_service.send(
        ctx, who, "alice@corp.test", schemas.SendMessage(to="other@corp.test", subject="private", text="x"), None
    )
    async with Client(keyed(ctx, scoped.api_key)) as client:
        inboxes = data(await client.call_tool("list_inboxes", {}))["inboxes"]
        assert [i["inbox_id"] for i in inboxes] == ["agent@corp.test"]
        for tool, args in (
            ("list_threads", {"inbox_id": "other@corp.test"}),
            ("wait_for_message", {"inbox_id": "other@corp.test", "timeout": 0}),
            ("send_message", {"inbox_id": "other@corp.test", "to": ["alice@corp.test"], "subject": "s", "text": "t"}),
        ):
            assert error_text(await client.call_tool(tool, args)) == "inbox not found", tool
        refused = await client.call_tool("create_inbox", {"username": "sneaky", "domain": "corp.test"})
        assert "scoped to one inbox" in error_text(refused)


async def test_unauthorized_principal_source_never_leaks_a_trace(ctx: Context) -> None:
    async def nobody(_: ToolContext) -> Principal:
        raise Unauthorized("missing API key", fix="Send Authorization: Bearer <api key>.")

    async with Client(build_server(ctx, nobody)) as client:
        text = error_text(await client.call_tool("get_thread", {"inbox_id": "a@corp.test", "thread_id": "t"}))
    assert text == "missing API key Fix: Send Authorization: Bearer <api key>."
