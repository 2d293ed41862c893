"""Real-time events against a real server: the durable feed (cursor, long-poll) and the WebSocket,
driven by the official agentmail SDK, with mail sent to the server's MX."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from agentmail import AsyncAgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.websockets.types import Subscribe

from mailclient import send_raw, setup_inbox, smtp
from serverproc import AgentpostServer


@pytest.fixture(scope="module")
def http(shared_server: AgentpostServer) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


def new_inbox(http: httpx.Client) -> str:
    return setup_inbox(http, f"rt{uuid.uuid4().hex[:8]}@events{uuid.uuid4().hex[:6]}.test")


def mail(server: AgentpostServer, inbox: str, message_id: str) -> None:
    raw = f"Message-ID: {message_id}\r\nFrom: a@remote.test\r\nSubject: rt\r\n\r\nhello\r\n".encode()
    assert send_raw(server.mx_host, server.mx_port, "a@remote.test", [inbox], raw)[0] == 250


def sdk(server: AgentpostServer, key: str | None = None) -> AsyncAgentMail:
    ws_url = server.http_url.replace("http://", "ws://")
    return AsyncAgentMail(
        api_key=key or server.api_key, environment=AgentMailEnvironment(http=server.http_url, websockets=ws_url)
    )


def feed(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/v0/events", params=params, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_feed_lists_events_in_commit_order_and_a_long_poll_wakes_on_new_mail(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    inbox = new_inbox(http)
    ids = [f"<order-{n}-{uuid.uuid4().hex[:6]}@remote.test>" for n in range(3)]
    for message_id in ids:
        mail(shared_server, inbox, message_id)
    page = feed(http, inbox_ids=inbox)
    assert [e["message"]["message_id"] for e in page["events"]] == ids
    assert {e["type"] for e in page["events"]} == {"event"}
    assert {e["event_type"] for e in page["events"]} == {"message.received"}
    assert page["next_after"] == page["events"][-1]["event_id"]
    # Nothing new: wait=0 answers at once, with the same cursor.
    assert feed(http, inbox_ids=inbox, after=page["next_after"]) == {
        "events": [],
        "count": 0,
        "next_after": page["next_after"],
    }

    late = f"<late-{uuid.uuid4().hex[:6]}@remote.test>"
    timer = threading.Timer(0.5, mail, (shared_server, inbox, late))
    started = time.monotonic()
    timer.start()
    try:
        woken = feed(http, inbox_ids=inbox, after=page["next_after"], wait=20)
    finally:
        timer.join()
    elapsed = time.monotonic() - started
    print(f"\nlong-poll answered {elapsed * 1000:.0f} ms after it started (mail sent at 500 ms)")
    assert [e["message"]["message_id"] for e in woken["events"]] == [late]
    assert 0.4 < elapsed < 5


def test_reconnecting_with_the_last_event_id_returns_exactly_the_missed_100_in_order(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    inbox = new_inbox(http)
    mail(shared_server, inbox, "<before@remote.test>")
    last = feed(http, inbox_ids=inbox)["next_after"]
    # The agent is away; 100 messages arrive, and mail to another inbox in between.
    other = new_inbox(http)
    sent = [f"<missed-{n}-{uuid.uuid4().hex[:6]}@remote.test>" for n in range(100)]
    with smtp(shared_server.mx_host, shared_server.mx_port) as client:
        for n, message_id in enumerate(sent):
            for rcpt in [inbox, other] if n % 10 == 0 else [inbox]:
                raw = f"Message-ID: {message_id}\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()
                client.mail("a@remote.test")
                assert client.rcpt(rcpt)[0] == 250
                assert client.data(raw)[0] == 250
    got: list[str] = []
    cursor = last
    for _ in range(20):
        page = feed(http, inbox_ids=inbox, after=cursor, limit=30)
        if not page["events"]:
            break
        assert len(page["events"]) <= 30
        got.extend(e["message"]["message_id"] for e in page["events"])
        cursor = page["next_after"]
    assert got == sent
    assert all(e["message"]["inbox_id"] == inbox for e in feed(http, inbox_ids=inbox, after=last)["events"])


def test_feed_is_scoped_to_an_inbox_key_and_rejects_bad_cursors(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    mine, theirs = new_inbox(http), new_inbox(http)
    key = http.post("/v0/api-keys", json={"name": "scoped", "inbox_id": mine}).json()["api_key"]
    mail(shared_server, theirs, f"<theirs-{uuid.uuid4().hex[:6]}@remote.test>")
    mine_id = f"<mine-{uuid.uuid4().hex[:6]}@remote.test>"
    mail(shared_server, mine, mine_id)
    with httpx.Client(base_url=shared_server.http_url, headers={"authorization": f"Bearer {key}"}) as scoped:
        events = feed(scoped)["events"]
        assert [e["message"]["message_id"] for e in events] == [mine_id]
        assert scoped.get("/v0/events", params={"inbox_ids": theirs}).status_code == 404
    assert http.get("/v0/events", params={"after": "evt_nonexistent"}).status_code == 400
    assert http.get("/v0/events", params={"event_types": "message.nonsense"}).status_code == 422
    no_key = httpx.get(shared_server.http_url + "/v0/events")
    assert no_key.status_code == 401
    # Type filter: the received event is listed under its own type only.
    assert feed(http, inbox_ids=mine, event_types="message.sent")["events"] == []


async def test_websocket_through_the_sdk_receives_message_received_for_mail_to_the_mx(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    inbox, other = new_inbox(http), new_inbox(http)
    client = sdk(shared_server)
    async with client.websockets.connect() as socket:
        await socket.send_subscribe(Subscribe(event_types=["message.received"], inbox_ids=[inbox]))
        subscribed = await asyncio.wait_for(socket.recv(), 10)
        assert subscribed.type == "subscribed"
        assert subscribed.inbox_ids == [inbox]
        # Mail to another inbox first: the filter must hold it back.
        await asyncio.to_thread(mail, shared_server, other, "<filtered@remote.test>")
        wanted = f"<ws-{uuid.uuid4().hex[:6]}@remote.test>"
        started = time.monotonic()
        await asyncio.to_thread(mail, shared_server, inbox, wanted)
        event = await asyncio.wait_for(socket.recv(), 10)
        print(f"\nevent on the WebSocket {1000 * (time.monotonic() - started):.0f} ms after the SMTP send began")
        assert event.type == "event"
        assert event.event_type == "message.received"
        assert event.message.message_id == wanted
        assert event.message.inbox_id == inbox
        assert event.thread.thread_id == event.message.thread_id
        # The same event id the feed gives.
        listed = feed(http, inbox_ids=inbox)["events"]
        assert listed[-1]["event_id"] == event.event_id


async def test_websocket_with_a_bad_key_is_refused_401(shared_server: AgentpostServer) -> None:
    with pytest.raises(ApiError) as refused:
        async with sdk(shared_server, key="ap_not_a_key").websockets.connect():
            pass
    assert refused.value.status_code == 401


async def test_websocket_accepts_api_key_query_and_answers_bad_frames_with_errors_then_resubscribes(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    first, second = new_inbox(http), new_inbox(http)
    url = shared_server.http_url.replace("http://", "ws://") + f"/v0?api_key={shared_server.api_key}"
    async with websockets.connect(url) as ws:
        await ws.send("not json")
        assert json.loads(await ws.recv()) == {
            "type": "error",
            "name": "ValidationError",
            "message": "frame is not JSON",
        }
        await ws.send(json.dumps({"type": "subscribe", "event_types": ["message.nonsense"]}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["name"] == "ValidationError"
        await ws.send(json.dumps({"type": "subscribe", "inbox_ids": [first]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await asyncio.to_thread(mail, shared_server, first, "<to-first@remote.test>")
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["message"]["message_id"] == "<to-first@remote.test>"
        # Resubscribe to the other inbox: from now on only its mail.
        await ws.send(json.dumps({"type": "subscribe", "inbox_ids": [second]}))
        assert json.loads(await ws.recv())["inbox_ids"] == [second]
        await asyncio.to_thread(mail, shared_server, first, "<first-again@remote.test>")
        await asyncio.to_thread(mail, shared_server, second, "<to-second@remote.test>")
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert event["message"]["message_id"] == "<to-second@remote.test>"


def test_feed_and_webhook_carry_the_same_envelope_for_one_event(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    from webhookreceiver import WebhookReceiver

    inbox = new_inbox(http)
    with WebhookReceiver() as receiver:
        hook = http.post(
            "/v0/inboxes/" + inbox + "/webhooks", json={"url": receiver.url, "event_types": ["message.received"]}
        )
        assert hook.status_code == 200, hook.text
        mail(shared_server, inbox, "<same-envelope@remote.test>")
        delivered = json.loads(receiver.wait_for(1)[0]["body"])
        http.delete(f"/v0/webhooks/{hook.json()['webhook_id']}")
    (listed,) = feed(http, inbox_ids=inbox)["events"]
    assert listed == delivered
