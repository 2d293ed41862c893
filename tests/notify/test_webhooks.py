"""Webhook delivery against a real receiver: signature, retry after an outage, stable ids."""

from __future__ import annotations

from pathlib import Path

from standardwebhooks.webhooks import Webhook as Verifier

from mailclient import send_raw, setup_inbox
from serverproc import AgentpostServer
from webhookreceiver import WebhookReceiver


def test_webhook_is_retried_after_a_receiver_outage_with_the_same_event_id(tmp_path: Path, database_url: str) -> None:
    import conftest

    server = AgentpostServer(
        tmp_path / "data",
        database_url=database_url if conftest.BACKEND == "postgresql" else "",
        extra_env={"AGENTPOST_WEBHOOKS_RETRY_SCHEDULE": "[0.3, 0.6, 1.0]"},
    )
    server.setup()
    server.start()
    try:
        with WebhookReceiver(fail_first=3) as receiver, server.client() as http:
            inbox = setup_inbox(http, "hooks@hooks.example.test")
            hook = http.post("/v0/webhooks", json={"url": receiver.url, "event_types": ["message.received"]}).json()
            raw = b"Message-ID: <hook-1@remote.test>\r\nSubject: hi\r\n\r\nhello\r\n"
            assert send_raw(server.mx_host, server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
            requests = receiver.wait_for(1, timeout=30)
            assert len(requests) == 1, f"attempts={receiver.attempts}"
            assert receiver.attempts == 4  # three 503s, then success
            payload = Verifier(hook["secret"]).verify(requests[0]["body"], requests[0]["headers"])
            assert payload["message"]["message_id"] == "<hook-1@remote.test>"
            assert requests[0]["headers"]["svix-id"] == payload["event_id"]
    finally:
        server.stop()


def test_pending_webhook_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    import conftest

    server = AgentpostServer(
        tmp_path / "data",
        database_url=database_url if conftest.BACKEND == "postgresql" else "",
        extra_env={"AGENTPOST_WEBHOOKS_RETRY_SCHEDULE": "[1.0]"},
    )
    server.setup()
    server.start()
    try:
        with WebhookReceiver(fail_first=10**6) as down, server.client() as http:
            inbox = setup_inbox(http, "restart@hooks.example.test")
            hook = http.post("/v0/webhooks", json={"url": down.url, "event_types": ["message.received"]}).json()
            raw = b"Message-ID: <hook-2@remote.test>\r\nSubject: hi\r\n\r\nhello\r\n"
            assert send_raw(server.mx_host, server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
            down.wait_for(1, timeout=3)
            assert down.attempts >= 1
        server.stop()
        with WebhookReceiver() as up:
            server.start()
            with server.client() as http:
                http.patch(f"/v0/webhooks/{hook['webhook_id']}", json={"url": up.url}).raise_for_status()
            requests = up.wait_for(1, timeout=20)
            assert len(requests) == 1
            assert (
                Verifier(hook["secret"]).verify(requests[0]["body"], requests[0]["headers"])["event_type"]
                == "message.received"
            )
    finally:
        server.stop()
