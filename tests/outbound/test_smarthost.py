"""Smarthost mode through a real server process: every remote message goes to the relay over
STARTTLS with AUTH, whatever the recipient domain's DNS says; hosted recipients stay local."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailclient import setup_inbox
from serverproc import AgentpostServer, free_port

RELAY_IP = "127.0.0.12"
USER, PASSWORD = "agentpost", "relay-secret"


class Relay:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool, Any]] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.lock = threading.Lock()

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        return AuthResult(success=(data.login.decode(), data.password.decode()) == (USER, PASSWORD), handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(
                (
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content),
                    server.transport.get_extra_info("sslcontext") is not None,
                    session.authenticated,
                )
            )
        return "250 2.0.0 relayed"


def _relay(port: int, handler: Relay) -> Controller:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.test").configure_cert(context)
    return Controller(
        handler,
        hostname=RELAY_IP,
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=handler.authenticate,
    )


def _server(tmp: Any, postgres: Any, port: int, password: str) -> AgentpostServer:
    url = str(postgres.create_database("s" + str(port) + password[:3])) if postgres is not None else ""
    return AgentpostServer(
        tmp,
        database_url=url,
        extra_env={
            "AGENTPOST_OUTBOUND_SMARTHOST": f"{RELAY_IP}:{port}",
            "AGENTPOST_OUTBOUND_SMARTHOST_USERNAME": USER,
            "AGENTPOST_OUTBOUND_SMARTHOST_PASSWORD": password,
            "AGENTPOST_OUTBOUND_RETRY_SCHEDULE": "[0.5]",
        },
    )


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[Relay, int]]:
    handler = Relay()
    port = free_port(RELAY_IP)
    controller = _relay(port, handler)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _deliveries(http: httpx.Client, inbox: str, message_id: str, outcome: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = http.get(f"/v0/inboxes/{inbox}/messages/{message_id}/deliveries").json()["deliveries"]
        if any(d["outcome"] == outcome for d in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {outcome} attempt: {found}")


def test_remote_mail_goes_through_the_smarthost_with_starttls_and_auth_and_local_mail_stays_local(
    relay: tuple[Relay, int], tmp_path: Any, postgres: Any
) -> None:
    handler, port = relay
    server = _server(tmp_path / "data", postgres, port, PASSWORD)
    server.setup()
    server.start()
    try:
        with server.client() as http:
            inbox = setup_inbox(http, "agent@hybrid.test")
            setup_inbox(http, "colleague@hybrid.test")
            # No DNS server knows nowhere.test: only the smarthost can carry this.
            sent = http.post(
                f"/v0/inboxes/{inbox}/messages/send",
                json={"to": ["someone@nowhere.test", "colleague@hybrid.test"], "subject": "via relay", "text": "hi"},
            ).json()
            attempts = _deliveries(http, inbox, sent["message_id"], "delivered")
            local = http.get("/v0/inboxes/colleague@hybrid.test/messages").json()["messages"]
    finally:
        server.stop()
    assert [a["remote_host"] for a in attempts] == [RELAY_IP]
    assert attempts[0]["tls_version"] and attempts[0]["tls_version"].startswith("TLSv1.")
    assert len(handler.messages) == 1
    mail_from, rcpts, raw, tls, login = handler.messages[0]
    assert rcpts == ["someone@nowhere.test"] and tls and login is True
    assert b"Subject: via relay" in raw and raw.count(b"DKIM-Signature:") == 2
    assert handler.logins[-1] == (USER.encode(), PASSWORD.encode())
    assert [m["subject"] for m in local] == ["via relay"]


def test_wrong_smarthost_password_defers_with_the_auth_failure_recorded(
    relay: tuple[Relay, int], tmp_path: Any, postgres: Any
) -> None:
    handler, port = relay
    before = len(handler.messages)
    server = _server(tmp_path / "data", postgres, port, "wrong-password")
    server.setup()
    server.start()
    try:
        with server.client() as http:
            inbox = setup_inbox(http, "agent@hybrid.test")
            sent = http.post(
                f"/v0/inboxes/{inbox}/messages/send",
                json={"to": "someone@nowhere.test", "subject": "bad creds", "text": "hi"},
            ).json()
            attempts = _deliveries(http, inbox, sent["message_id"], "deferred")
    finally:
        server.stop()
    assert attempts[0]["code"] == 451 and "AUTH failed: 535" in attempts[0]["reply"]
    assert len(handler.messages) == before
