"""The examples run as written against a real server: the WebSocket agent replies, the webhook receiver verifies."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Signer

from mailclient import send_raw, setup_inbox
from serverproc import AgentpostServer, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Example:
    """An example script as a child process whose stdout lines can be awaited."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r}; output so far:\n" + "\n".join(self.seen))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def example() -> Iterator[list[Example]]:
    started: list[Example] = []
    yield started
    for proc in started:
        proc.stop()


def test_websocket_agent_replies_to_a_mail_received_on_the_mx(server: AgentpostServer, example: list[Example]) -> None:
    with server.client() as http:
        inbox = setup_inbox(http, "agent@agents.example.test")
        agent = Example(
            "agent_websocket.py",
            inbox,
            env={"AGENTMAIL_API_KEY": server.api_key, "AGENTPOST_URL": server.http_url},
        )
        example.append(agent)
        agent.wait_line("listening on")
        raw = (
            b"From: Someone <someone@remote.test>\r\nTo: agent@agents.example.test\r\n"
            b"Message-ID: <ask-1@remote.test>\r\nSubject: ping\r\n\r\nare you there?\r\n"
        )
        assert send_raw(server.mx_host, server.mx_port, "someone@remote.test", [inbox], raw)[0] == 250
        line = agent.wait_line("replied to <ask-1@remote.test>")
        reply_id = line.rsplit(" with ", 1)[1]
        reply = http.get(f"/v0/inboxes/{inbox}/messages/{reply_id}").json()
        assert reply["in_reply_to"] == "<ask-1@remote.test>"
        assert any("someone@remote.test" in to for to in reply["to"])
        assert "are you there?" in reply["text"] and "sent" in reply["labels"]


def test_webhook_receiver_accepts_a_signed_delivery_and_rejects_a_bad_signature(
    server: AgentpostServer, example: list[Example]
) -> None:
    port = free_port()
    with server.client() as http:
        inbox = setup_inbox(http, "hooked@receiver.example.test")
        hook = http.post(
            "/v0/webhooks",
            json={"url": f"http://127.0.0.1:{port}/hook", "event_types": ["message.received"], "inbox_ids": [inbox]},
        ).json()
        receiver = Example("webhook_receiver.py", "--port", str(port), "--secret", hook["secret"])
        example.append(receiver)
        receiver.wait_line("listening on")
        raw = b"From: a@remote.test\r\nMessage-ID: <hook-ex@remote.test>\r\nSubject: for the receiver\r\n\r\nhi\r\n"
        assert send_raw(server.mx_host, server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
        printed = json.loads(receiver.wait_line("{"))
        assert printed["verified"] is True and printed["event_type"] == "message.received"
        assert printed["subject"] == "for the receiver"

    body = json.dumps({"type": "event", "event_type": "message.received", "event_id": "evt_forged"})
    now = datetime.now(UTC)
    wrong = Signer("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").sign("evt_forged", now, body)
    headers = {"webhook-id": "evt_forged", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": wrong}
    response = httpx.post(f"http://127.0.0.1:{port}/hook", content=body, headers=headers)
    assert response.status_code == 401
    receiver.wait_line("rejected")
    # A correctly signed request to the same receiver is accepted: the 401 was the signature.
    right = Signer(hook["secret"]).sign("evt_forged", now, body)
    response = httpx.post(
        f"http://127.0.0.1:{port}/hook", content=body, headers={**headers, "webhook-signature": right}
    )
    assert response.status_code == 204
