"""Webhooks against a real server and receiver: inbox scope, custom headers, enable/disable, auto-disable, replay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

import conftest
from mailclient import send_raw, setup_inbox
from serverproc import AgentpostServer
from webhookreceiver import WebhookReceiver

DISABLE_AFTER = 3


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[AgentpostServer]:
    url = str(postgres.create_database("w" + uuid.uuid4().hex[:12])) if postgres is not None else ""
    server = AgentpostServer(
        tmp_path_factory.mktemp("hooks") / "data",
        database_url=url,
        extra_env={
            "AGENTPOST_WEBHOOKS_RETRY_SCHEDULE": "[0.2]",
            "AGENTPOST_WEBHOOKS_DISABLE_AFTER_FAILURES": str(DISABLE_AFTER),
        },
    )
    server.setup()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def deliver(server: AgentpostServer, inbox: str, tag: str) -> None:
    raw = f"Message-ID: <{tag}@remote.test>\r\nSubject: {tag}\r\n\r\nhello\r\n".encode()
    assert send_raw(server.mx_host, server.mx_port, "a@remote.test", [inbox], raw)[0] == 250


def wait_until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def subscribe(http: httpx.Client, url: str, path: str = "/v0/webhooks", **extra: Any) -> dict[str, Any]:
    response = http.post(path, json={"url": url, "event_types": ["message.received"], **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_custom_headers_are_sent_with_every_delivery_and_their_values_never_returned(srv: AgentpostServer) -> None:
    with WebhookReceiver() as receiver, srv.client() as http:
        inbox = setup_inbox(http, "hdr@hdr.example.test")
        hook = subscribe(
            http,
            receiver.url,
            inbox_ids=[inbox],
            headers={"Authorization": "Bearer sekrit-token-1", "X-Tenant": "t1"},
        )
        assert "headers" not in hook and "sekrit" not in http.get(f"/v0/webhooks/{hook['webhook_id']}").text
        names = http.get(f"/v0/webhooks/{hook['webhook_id']}/headers").json()
        assert names == {"header_names": ["Authorization", "X-Tenant"]}
        deliver(srv, inbox, "hdr-1")
        request = receiver.wait_for(1)[0]
        assert request["headers"]["authorization"] == "Bearer sekrit-token-1"
        assert request["headers"]["x-tenant"] == "t1"
        Verifier(hook["secret"]).verify(request["body"], request["headers"])

        # Names are case-insensitive: x-tenant replaces X-Tenant; a removed header is no longer sent.
        changed = http.patch(
            f"/v0/webhooks/{hook['webhook_id']}/headers",
            json={"headers": {"x-tenant": "t2"}, "remove_headers": ["authorization"]},
        )
        assert changed.json() == {"header_names": ["x-tenant"]}
        deliver(srv, inbox, "hdr-2")
        second = receiver.wait_for(2)[1]
        assert second["headers"]["x-tenant"] == "t2" and "authorization" not in second["headers"]

    if conftest.BACKEND == "sqlite":
        # Encrypted at rest: the value is nowhere in the database file.
        assert b"sekrit-token-1" not in (srv.data_dir / "agentpost.db").read_bytes()


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.test"},
        {"Content-Length": "1"},
        {"Transfer-Encoding": "chunked"},
        {"Connection": "close"},
        {"webhook-signature": "v1,forged"},
        {"Svix-Id": "x"},
        {"X-Ok": "a\r\nX-Injected: 1"},
        {"X-Ok": "a\nb"},
        {"Bad Name": "x"},
        {"X:Colon": "x"},
        {"X-A": "1", "x-a": "2"},
    ],
)
def test_invalid_or_reserved_custom_headers_are_refused_422(srv: AgentpostServer, headers: dict[str, str]) -> None:
    with srv.client() as http:
        created = http.post(
            "/v0/webhooks", json={"url": "http://127.0.0.1:9/h", "event_types": ["message.sent"], "headers": headers}
        )
        assert created.status_code == 422, created.text
        hook = subscribe(http, "http://127.0.0.1:9/h")
        patched = http.patch(f"/v0/webhooks/{hook['webhook_id']}/headers", json={"headers": headers})
        assert patched.status_code == 422, patched.text
        both = http.patch(
            f"/v0/webhooks/{hook['webhook_id']}/headers", json={"headers": {"X-A": "1"}, "remove_headers": ["x-a"]}
        )
        assert both.status_code == 422
        http.delete(f"/v0/webhooks/{hook['webhook_id']}").raise_for_status()


def test_inbox_webhooks_receive_only_their_inbox_and_inbox_keys_see_only_them(srv: AgentpostServer) -> None:
    with WebhookReceiver() as for_a, WebhookReceiver() as for_b, srv.client() as http:
        a = setup_inbox(http, "a@scope.example.test")
        b = http.post("/v0/inboxes", json={"username": "b", "domain": "scope.example.test"}).json()["inbox_id"]
        hook_a = subscribe(http, for_a.url, path=f"/v0/inboxes/{a}/webhooks", headers={"X-Inbox": "a"})
        assert hook_a["inbox_id"] == a and hook_a["inbox_ids"] == [a]
        hook_b = subscribe(http, for_b.url, inbox_ids=[b])
        assert "inbox_id" not in hook_b and hook_b["inbox_ids"] == [b]
        # The inbox routes reach only the inbox's own webhooks, headers included.
        assert http.get(f"/v0/inboxes/{a}/webhooks/{hook_a['webhook_id']}/headers").json()["header_names"] == [
            "X-Inbox"
        ]
        assert http.get(f"/v0/inboxes/{a}/webhooks/{hook_b['webhook_id']}").status_code == 404
        assert http.patch(
            f"/v0/inboxes/{a}/webhooks/{hook_a['webhook_id']}", json={"add_inbox_ids": [b]}
        ).status_code in (422, 400)
        listed = http.get(f"/v0/inboxes/{a}/webhooks").json()["webhooks"]
        assert [w["webhook_id"] for w in listed] == [hook_a["webhook_id"]]

        key = http.post("/v0/api-keys", json={"name": "scoped", "inbox_id": a}).json()["api_key"]
        with httpx.Client(base_url=srv.http_url, headers={"authorization": f"Bearer {key}"}) as scoped:
            own = subscribe(scoped, for_a.url)
            assert own["inbox_id"] == a and own["inbox_ids"] == [a]
            assert scoped.get(f"/v0/webhooks/{hook_b['webhook_id']}").status_code == 404
            seen = {w["webhook_id"] for w in scoped.get("/v0/webhooks").json()["webhooks"]}
            assert seen == {own["webhook_id"], hook_a["webhook_id"]}
            assert (
                scoped.post(
                    "/v0/webhooks", json={"url": for_a.url, "event_types": ["message.received"], "inbox_ids": [b]}
                ).status_code
                == 404
            )
            scoped.delete(f"/v0/webhooks/{own['webhook_id']}").raise_for_status()

        deliver(srv, b, "scope-b")
        deliver(srv, a, "scope-a")
        assert len(for_a.wait_for(1)) == 1
        assert len(for_b.wait_for(1)) == 1
        time.sleep(1.0)  # nothing else arrives: each webhook saw only its inbox's message
        assert [e["message"]["subject"] for e in for_a.events()] == ["scope-a"]
        assert [e["message"]["subject"] for e in for_b.events()] == ["scope-b"]
        assert for_a.requests[0]["headers"]["x-inbox"] == "a"


def test_a_disabled_webhook_gets_nothing_until_it_is_enabled_again(srv: AgentpostServer) -> None:
    with WebhookReceiver() as receiver, srv.client() as http:
        inbox = setup_inbox(http, "toggle@toggle.example.test")
        hook = subscribe(http, receiver.url, inbox_ids=[inbox])
        off = http.patch(f"/v0/webhooks/{hook['webhook_id']}", json={"enabled": False}).json()
        assert off["enabled"] is False
        deliver(srv, inbox, "while-off")
        time.sleep(1.5)
        assert receiver.attempts == 0
        assert http.patch(f"/v0/webhooks/{hook['webhook_id']}", json={"enabled": True}).json()["enabled"] is True
        deliver(srv, inbox, "while-on")
        receiver.wait_for(1)
        time.sleep(0.5)
        assert [e["message"]["subject"] for e in receiver.events()] == ["while-on"]


def test_webhook_is_disabled_after_n_consecutive_failures_and_the_event_is_logged(srv: AgentpostServer) -> None:
    with WebhookReceiver(fail_first=10**6) as down, srv.client() as http:
        inbox = setup_inbox(http, "flaky@flaky.example.test")
        start = http.get("/v0/events", params={"limit": 500}).json()
        after = start.get("next_after")
        hook = subscribe(http, down.url, inbox_ids=[inbox])
        deliver(srv, inbox, "flaky-1")
        wait_until(lambda: not http.get(f"/v0/webhooks/{hook['webhook_id']}").json()["enabled"])
        time.sleep(1.0)
        assert down.attempts == DISABLE_AFTER  # nothing more is attempted once it is disabled
        params: dict[str, Any] = {"event_types": "webhook.disabled", "limit": 500}
        if after:
            params["after"] = after
        events = wait_until(lambda: http.get("/v0/events", params=params).json()["events"], timeout=10)
        assert [e["webhook"]["webhook_id"] for e in events] == [hook["webhook_id"]]
        assert events[0]["webhook"]["consecutive_failures"] == DISABLE_AFTER


def test_a_success_resets_the_run_of_failures(srv: AgentpostServer) -> None:
    with WebhookReceiver(fail_first=DISABLE_AFTER - 1) as receiver, srv.client() as http:
        inbox = setup_inbox(http, "reset@reset.example.test")
        hook = subscribe(http, receiver.url, inbox_ids=[inbox])
        deliver(srv, inbox, "reset-1")
        receiver.wait_for(1)
        # Another run of DISABLE_AFTER - 1 failures: without the reset that would be 2 * (N - 1) >= N.
        receiver.fail_first = receiver.attempts + DISABLE_AFTER - 1
        deliver(srv, inbox, "reset-2")
        assert len(receiver.wait_for(2)) == 2
        assert receiver.attempts == 2 * DISABLE_AFTER
        assert http.get(f"/v0/webhooks/{hook['webhook_id']}").json()["enabled"] is True


def test_replay_redelivers_the_events_of_a_time_range_with_the_same_event_ids(srv: AgentpostServer) -> None:
    with WebhookReceiver() as receiver, srv.client() as http:
        inbox = setup_inbox(http, "replay@replay.example.test")
        hook = subscribe(http, receiver.url, inbox_ids=[inbox])
        begin = datetime.now(UTC) - timedelta(seconds=1)
        deliver(srv, inbox, "replay-1")
        deliver(srv, inbox, "replay-2")
        first = [Verifier(hook["secret"]).verify(r["body"], r["headers"]) for r in receiver.wait_for(2)]
        end = datetime.now(UTC) + timedelta(seconds=1)
        path = f"/v0/webhooks/{hook['webhook_id']}/replay"
        response = http.post(path, json={"after": begin.isoformat(), "before": end.isoformat()})
        assert response.status_code == 200, response.text
        assert response.json() == {"webhook_id": hook["webhook_id"], "count": 2}
        requests = receiver.wait_for(4)
        assert len(requests) == 4
        again = [Verifier(hook["secret"]).verify(r["body"], r["headers"]) for r in requests[2:]]
        assert sorted(e["event_id"] for e in again) == sorted(e["event_id"] for e in first)
        assert {r["headers"]["webhook-id"] for r in requests[2:]} == {e["event_id"] for e in first}

        empty = http.post(path, json={"after": end.isoformat(), "before": (end + timedelta(hours=1)).isoformat()})
        assert empty.json()["count"] == 0
        backwards = http.post(path, json={"after": end.isoformat(), "before": begin.isoformat()})
        assert backwards.status_code == 422
        assert (
            http.post(
                "/v0/webhooks/wh_missing/replay", json={"after": begin.isoformat(), "before": end.isoformat()}
            ).status_code
            == 404
        )
