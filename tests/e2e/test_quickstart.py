"""The README quickstart, for real: swaks -> MX -> store -> API, the agentmail SDK, a signed webhook."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.inboxes.types import CreateInboxRequest
from standardwebhooks.webhooks import Webhook as Verifier

from serverproc import AgentpostServer
from webhookreceiver import WebhookReceiver

REPLY_BODY = """Sounds good, see you Tuesday.

On Mon, Jan 5, 2026 at 10:00 AM Bob Example <bob@remote.test> wrote:
> Can we meet on Tuesday?
> Bob
"""


def sdk(server: AgentpostServer) -> AgentMail:
    return AgentMail(
        api_key=server.api_key,
        environment=AgentMailEnvironment(http=server.http_url, websockets=server.http_url.replace("http", "ws")),
    )


def swaks(server: AgentpostServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", server.mx_host, "--port", str(server.mx_port), "--helo", "client.remote.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_messages(client: AgentMail, inbox_id: str, count: int, timeout: float = 10.0) -> list[object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.inboxes.messages.list(inbox_id).messages
        if len(found) >= count:
            return list(found)
        time.sleep(0.1)
    raise AssertionError(f"expected {count} messages in {inbox_id}")


def test_swaks_message_reaches_the_sdk_with_text_reply_thread_attachment_and_signed_webhook(
    server: AgentpostServer, tmp_path: Path
) -> None:
    client = sdk(server)
    client.domains.create(domain="agents.example.test")
    inbox = client.inboxes.create(
        request=CreateInboxRequest(username="support", domain="agents.example.test", display_name="Support Agent")
    )
    assert inbox.inbox_id == "support@agents.example.test"

    with WebhookReceiver() as receiver:
        hook = client.webhooks.create(url=receiver.url, event_types=["message.received"])
        assert hook.secret.startswith("whsec_")
        attachment = tmp_path / "invoice.txt"
        attachment.write_text("invoice #42\n")
        result = swaks(
            server,
            "--from",
            "bob@remote.test",
            "--to",
            inbox.inbox_id,
            "--header",
            "Subject: Re: meeting",
            "--header",
            "Message-Id: <reply-1@remote.test>",
            "--body",
            REPLY_BODY,
            "--attach",
            f"@{attachment}",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "250 2.0.0" in result.stdout

        messages = wait_messages(client, inbox.inbox_id, 1)
        message = client.inboxes.messages.get(inbox.inbox_id, messages[0].message_id)
        assert message.message_id == "<reply-1@remote.test>"
        assert message.subject == "Re: meeting"
        assert "see you Tuesday" in (message.text or "")
        assert "Can we meet" in (message.text or "")
        assert (message.extracted_text or "").strip() == "Sounds good, see you Tuesday."
        assert message.thread_id
        assert "received" in message.labels and "unread" in message.labels
        assert message.attachments and message.attachments[0].filename == "invoice.txt"

        # The attachment downloads through the signed URL, byte-exact.
        att = client.inboxes.messages.get_attachment(
            inbox.inbox_id, message.message_id, message.attachments[0].attachment_id
        )
        assert httpx.get(att.download_url).content == b"invoice #42\n"

        thread = client.inboxes.threads.get(inbox.inbox_id, message.thread_id)
        assert thread.message_count == 1 and thread.messages[0].message_id == message.message_id

        # A signed message.received webhook arrives and verifies with the subscription's secret.
        requests = receiver.wait_for(1)
        assert requests, "no webhook arrived"
        request = requests[0]
        payload = Verifier(hook.secret).verify(request["body"], request["headers"])
        assert payload["event_type"] == "message.received"
        assert payload["message"]["message_id"] == "<reply-1@remote.test>"
        assert payload["thread"]["thread_id"] == message.thread_id
        assert request["headers"]["webhook-id"] == payload["event_id"]
        assert json.loads(request["body"])["type"] == "event"


def test_raw_message_is_stored_byte_exact_behind_trace_headers(server: AgentpostServer) -> None:
    client = sdk(server)
    client.domains.create(domain="raw.example.test")
    inbox = client.inboxes.create(request=CreateInboxRequest(username="raw", domain="raw.example.test"))
    body = "Line one\r\nLine two with trailing space \r\n"
    result = swaks(
        server, "--from", "a@remote.test", "--to", inbox.inbox_id, "--header", "Subject: raw", "--body", body
    )
    assert result.returncode == 0, result.stdout
    message = wait_messages(client, inbox.inbox_id, 1)[0]
    raw = client.inboxes.messages.get_raw(inbox.inbox_id, message.message_id)
    data = httpx.get(raw.download_url).content
    assert data.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from client.remote.test")
    assert b"Line two with trailing space \r\n" in data
    assert raw.size == len(data)
