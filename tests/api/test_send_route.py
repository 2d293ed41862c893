"""The ASGI front of POST .../messages/send answers like the FastAPI route it stands in for:
same bodies, same errors, same authentication, and every other request passes through."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serverproc import AgentpostServer

DOMAIN = "front.example.test"
INBOX = f"agent@{DOMAIN}"


@pytest.fixture(scope="module")
def http(shared_server: AgentpostServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=shared_server.http_url, headers={"Authorization": f"Bearer {shared_server.api_key}"}
    ) as client:
        assert client.post("/v0/domains", json={"domain": DOMAIN}).status_code in (200, 201)
        assert client.post("/v0/inboxes", json={"username": "agent", "domain": DOMAIN}).status_code in (200, 201)
        assert client.post("/v0/inboxes", json={"username": "peer", "domain": DOMAIN}).status_code in (200, 201)
        yield client


def send_path(inbox: str = INBOX) -> str:
    return f"/v0/inboxes/{inbox}/messages/send"


def test_send_answers_message_and_thread_ids(http: httpx.Client) -> None:
    r = http.post(send_path(), json={"to": f"peer@{DOMAIN}", "subject": "hello", "text": "hi"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"message_id", "thread_id"}
    assert body["message_id"].endswith(f"@{DOMAIN}>")


def test_missing_and_wrong_keys_are_401_as_elsewhere(http: httpx.Client, shared_server: AgentpostServer) -> None:
    bare = httpx.post(shared_server.http_url + send_path(), json={"to": f"peer@{DOMAIN}", "text": "x"})
    wrong = httpx.post(
        shared_server.http_url + send_path(),
        json={"to": f"peer@{DOMAIN}", "text": "x"},
        headers={"Authorization": "Bearer am_wrong"},
    )
    other_route = httpx.get(shared_server.http_url + "/v0/inboxes", headers={"Authorization": "Bearer am_wrong"})
    for r in (bare, wrong):
        assert r.status_code == 401
        assert r.json()["name"] == other_route.json()["name"]
    assert wrong.json() == other_route.json()


def test_invalid_body_is_a_400_validation_error_with_paths(http: httpx.Client) -> None:
    r = http.post(send_path(), json={"to": 5, "subject": "x"})
    assert r.status_code == 400
    body = r.json()
    assert body["name"] == "ValidationError"
    assert any(e["path"].startswith("to") for e in body["errors"])
    broken = http.post(send_path(), content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["name"] == "ValidationError"


def test_service_errors_keep_their_status_and_fix(http: httpx.Client) -> None:
    unknown = http.post(send_path(f"nobody@{DOMAIN}"), json={"to": f"peer@{DOMAIN}", "text": "x"})
    assert unknown.status_code == 404 and unknown.json()["name"] == "NotFoundError"
    injected = http.post(
        send_path(), json={"to": f"peer@{DOMAIN}", "text": "x", "headers": {"X-Test": "a\r\nBcc: victim@example.com"}}
    )
    assert injected.status_code == 422, injected.text  # as through FastAPI (tests/e2e/test_send.py)
    assert injected.json()["errors"][0]["path"] == "headers.X-Test"


def test_idempotency_key_is_honoured_by_the_front(http: httpx.Client) -> None:
    payload = {"to": f"peer@{DOMAIN}", "subject": "once", "text": "only once"}
    first = http.post(send_path(), json=payload, headers={"Idempotency-Key": "front-1"})
    again = http.post(send_path(), json=payload, headers={"Idempotency-Key": "front-1"})
    changed = http.post(send_path(), json={**payload, "text": "other"}, headers={"Idempotency-Key": "front-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert changed.status_code == 409


def test_other_methods_and_routes_reach_fastapi(http: httpx.Client) -> None:
    # GET .../messages/send is FastAPI's GET .../messages/{message_id}: no message "send".
    got = http.get(send_path())
    assert got.status_code == 404 and got.json()["name"] == "NotFoundError"
    assert http.post(f"/v0/inboxes/{INBOX}/messages/send/extra", json={}).status_code in (404, 405)
    assert http.get("/healthz").json() == {"status": "ok"}
    schema = http.get("/openapi.json").json()
    assert "/v0/inboxes/{inbox_id}/messages/send" in schema["paths"]
