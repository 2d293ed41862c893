"""The HTTP contract with httpx and the agentmail SDK: errors, scopes, idempotency, pagination."""

from __future__ import annotations

import httpx
import pytest
from agentmail import AgentMail
from agentmail.api_keys.types import CreateBearerApiKeyRequest
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from agentmail.inboxes.types import CreateInboxRequest

from mailclient import send_raw, setup_inbox, wait_list
from serverproc import AgentpostServer


def sdk(server: AgentpostServer, key: str | None = None) -> AgentMail:
    return AgentMail(
        api_key=key or server.api_key, environment=AgentMailEnvironment(http=server.http_url, websockets="ws://x")
    )


def test_missing_or_wrong_key_is_401_with_the_error_body(shared_server: AgentpostServer) -> None:
    anonymous = httpx.get(shared_server.http_url + "/v0/inboxes")
    assert anonymous.status_code == 401
    assert anonymous.json()["name"] == "UnauthorizedError" and anonymous.json()["message"]
    wrong = httpx.get(shared_server.http_url + "/v0/inboxes", headers={"authorization": "Bearer ap_nope"})
    assert wrong.status_code == 401


def test_inbox_create_is_idempotent_by_client_id_and_conflicts_on_duplicate_address(
    shared_server: AgentpostServer,
) -> None:
    with shared_server.client() as http:
        http.post("/v0/domains", json={"domain": "idem.example.test"}).raise_for_status()
        body = {"username": "idem", "domain": "idem.example.test", "client_id": "create-idem-1"}
        first = http.post("/v0/inboxes", json=body)
        second = http.post("/v0/inboxes", json=body)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        dup = http.post("/v0/inboxes", json={"username": "idem", "domain": "idem.example.test"})
        assert dup.status_code == 409 and dup.json()["name"] == "ConflictError"


def test_validation_errors_are_400_with_paths_and_unknown_domain_is_422(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        bad = http.post("/v0/inboxes", json={"username": 5, "bogus": True})
        assert bad.status_code == 400
        assert bad.json()["name"] == "ValidationError"
        assert {e["path"] for e in bad.json()["errors"]} >= {"bogus"}
        unhosted = http.post("/v0/inboxes", json={"username": "x", "domain": "not-hosted.example.test"})
        assert unhosted.status_code == 422 and unhosted.json()["errors"][0]["path"] == "domain"
        injected = http.post(
            "/v0/inboxes", json={"username": "x", "domain": "idem.example.test", "display_name": "a\r\nBcc: x"}
        )
        assert injected.status_code == 422


def test_inbox_scoped_key_sees_only_its_inbox_and_gets_404_elsewhere(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        mine = setup_inbox(http, "mine@scope.example.test")
        other = http.post("/v0/inboxes", json={"username": "other", "domain": "scope.example.test"}).json()["inbox_id"]
        key = http.post("/v0/api-keys", json={"name": "scoped", "inbox_id": mine}).json()["api_key"]
    client = sdk(shared_server, key)
    assert client.inboxes.get(mine).inbox_id == mine
    with pytest.raises(NotFoundError):
        client.inboxes.get(other)
    with pytest.raises(NotFoundError):
        client.inboxes.messages.list(other)
    assert [i.inbox_id for i in client.inboxes.list().inboxes] == [mine]
    me = httpx.get(shared_server.http_url + "/v0/auth/me", headers={"authorization": f"Bearer {key}"}).json()
    assert me["scope_type"] == "inbox" and me["inbox_id"] == mine
    with pytest.raises(ApiError) as refused:
        client.inboxes.create(request=CreateInboxRequest(username="sneaky", domain="scope.example.test"))
    assert refused.value.status_code == 403


def test_message_pagination_walks_every_message_once_newest_first(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        inbox = setup_inbox(http, "pages@pages.example.test")
        for n in range(7):
            raw = f"Message-ID: <page-{n}@remote.test>\r\nSubject: page {n}\r\n\r\nbody\r\n".encode()
            assert send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
        wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 7)
    client = sdk(shared_server)
    seen: list[str] = []
    token = None
    while True:
        page = client.inboxes.messages.list(inbox, limit=3, page_token=token)
        assert page.count == len(page.messages) <= 3
        seen.extend(m.message_id for m in page.messages)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"<page-{n}@remote.test>" for n in reversed(range(7))]
    ascending = client.inboxes.messages.list(inbox, ascending=True, limit=100)
    assert [m.message_id for m in ascending.messages] == list(reversed(seen))
    assert (
        httpx.get(
            shared_server.http_url + f"/v0/inboxes/{inbox}/messages",
            params={"page_token": "!!"},
            headers={"authorization": f"Bearer {shared_server.api_key}"},
        ).status_code
        == 400
    )


def test_labels_filter_update_and_system_labels_are_protected(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        inbox = setup_inbox(http, "labels@labels.example.test")
        raw = b"Message-ID: <lab-1@remote.test>\r\nSubject: l\r\n\r\nbody\r\n"
        assert send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
        wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 1)
        path = f"/v0/inboxes/{inbox}/messages/<lab-1@remote.test>"
        updated = http.patch(path, json={"add_labels": ["triaged"], "remove_labels": ["unread"]})
        assert updated.status_code == 200, updated.text
        assert updated.json()["labels"] == ["received", "triaged"]
        assert http.patch(path, json={"remove_labels": ["received"]}).status_code == 422
        listed = http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "triaged"}).json()
        assert [m["message_id"] for m in listed["messages"]] == ["<lab-1@remote.test>"]
        assert http.get(f"/v0/inboxes/{inbox}/messages", params={"labels": "unread"}).json()["count"] == 0
        thread_id = listed["messages"][0]["thread_id"]
        assert "triaged" in http.get(f"/v0/threads/{thread_id}").json()["labels"]


def test_unknown_things_are_404_with_error_body_and_openapi_is_served(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        for path in (
            "/v0/inboxes/none@nowhere.test",
            "/v0/threads/thr_missing",
            "/v0/domains/dom_missing",
            "/v0/webhooks/wh_missing",
        ):
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json()["name"] == "NotFoundError"
        assert http.get("/openapi.json").json()["info"]["title"] == "agentpost"
        assert http.get("/docs").status_code == 200
        assert http.get("/v0/downloads/forged.token").status_code == 404


def test_domains_and_keys_round_trip_through_the_sdk(shared_server: AgentpostServer) -> None:
    client = sdk(shared_server)
    domain = client.domains.create(domain="sdk.example.test")
    assert {r.type for r in domain.records} >= {"MX", "TXT"}
    assert client.domains.get(domain.domain_id).domain == "sdk.example.test"
    assert "sdk.example.test" in {d.domain for d in client.domains.list().domains}
    zone = b"".join(client.domains.get_zone_file(domain.domain_id)).decode()
    assert "IN\tMX\t10 " in zone and "_dmarc.sdk.example.test." in zone
    client.domains.delete(domain.domain_id)
    with pytest.raises(NotFoundError):
        client.domains.get(domain.domain_id)
    created = client.api_keys.create(request=CreateBearerApiKeyRequest(name="extra"))
    assert created.api_key.startswith("ap_")
    assert created.api_key_id in {k.api_key_id for k in client.api_keys.list().api_keys}
    client.api_keys.delete(created.api_key_id)
    assert (
        httpx.get(
            shared_server.http_url + "/v0/inboxes", headers={"authorization": f"Bearer {created.api_key}"}
        ).status_code
        == 401
    )


def test_from_to_subject_filters_and_message_ids_with_a_slash(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        inbox = setup_inbox(http, "filters@filters.example.test")
        mails = [
            ("<a/b@remote.test>", "Alice <alice@remote.test>", "Invoice March"),
            ("<plain@remote.test>", "Bob <bob@remote.test>", "Lunch?"),
        ]
        for message_id, sender, subject in mails:
            raw = f"Message-ID: {message_id}\r\nFrom: {sender}\r\nTo: {inbox}\r\nSubject: {subject}\r\n\r\nx\r\n"
            assert (
                send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox], raw.encode())[0] == 250
            )
        wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 2)
    client = sdk(shared_server)
    assert [m.message_id for m in client.inboxes.messages.list(inbox, from_=["ALICE"]).messages] == [
        "<a/b@remote.test>"
    ]
    assert [m.message_id for m in client.inboxes.messages.list(inbox, subject=["lunch"]).messages] == [
        "<plain@remote.test>"
    ]
    assert client.inboxes.messages.list(inbox, to=["nobody@"]).count == 0
    fetched = client.inboxes.messages.get(inbox, "<a/b@remote.test>")
    assert fetched.subject == "Invoice March"
    assert client.inboxes.messages.get_raw(inbox, "<a/b@remote.test>").size > 0


def test_a_domain_with_inbound_disabled_refuses_mail_and_inboxes_default_to_the_first_domain(
    shared_server: AgentpostServer,
) -> None:
    import smtplib

    with shared_server.client() as http:
        setup_inbox(http, "in@switch.example.test")
        domain = http.get("/v0/domains/switch.example.test").json()
        assert http.patch(f"/v0/domains/{domain['domain_id']}", json={"inbound_enabled": False}).status_code == 200
        with smtplib.SMTP(shared_server.mx_host, shared_server.mx_port, timeout=10) as client:
            client.ehlo("x.test")
            client.mail("a@remote.test")
            code, message = client.rcpt("in@switch.example.test")
        assert (code, message[:5]) == (550, b"5.7.1")
        first = http.get("/v0/domains", params={"limit": 1000}).json()["domains"][-1]["domain"]
        created = http.post("/v0/inboxes", json={"username": "defaulted"}).json()
        assert created["inbox_id"] == f"defaulted@{first}"


def test_label_filter_through_the_sdk(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        inbox = setup_inbox(http, "sdklabels@sdklabels.example.test")
        raw = b"Message-ID: <sl@remote.test>\r\nSubject: s\r\n\r\nx\r\n"
        assert send_raw(shared_server.mx_host, shared_server.mx_port, "a@remote.test", [inbox], raw)[0] == 250
        wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 1)
    client = sdk(shared_server)
    assert client.inboxes.messages.list(inbox, labels=["unread", "received"]).count == 1
    assert client.inboxes.messages.list(inbox, labels=["unread", "nope"]).count == 0
    assert client.inboxes.threads.list(inbox, labels=["unread"]).count == 1
