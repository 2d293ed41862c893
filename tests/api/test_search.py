"""Reading through the agentmail SDK: full-text search with highlights, label changes and their
protection, batch get and batch update, against a real server (SQLite or PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from agentmail.inboxes.types import CreateInboxRequest

from serverproc import AgentpostServer

DOMAIN = "search.example.test"
A, B, C = (f"{n}@{DOMAIN}" for n in ("alice", "bob", "carol"))


def _sdk(server: AgentpostServer, key: str) -> AgentMail:
    return AgentMail(api_key=key, environment=AgentMailEnvironment(http=server.http_url, websockets="ws://unused"))


@pytest.fixture(scope="module")
def client(shared_server: AgentpostServer) -> Iterator[AgentMail]:
    sdk = _sdk(shared_server, shared_server.api_key)
    sdk.domains.create(domain=DOMAIN)
    for name in ("alice", "bob", "carol"):
        sdk.inboxes.create(request=CreateInboxRequest(username=name, domain=DOMAIN))
    sdk.inboxes.messages.send(A, to=B, subject="Quarterly invoice", text="The numbers for the zeppelin project.")
    sdk.inboxes.messages.send(A, to=B, subject="Lunch plans", text="Noon at the usual place?")
    sdk.inboxes.messages.send(C, to=B, subject="Holiday", text="We could visit the zeppelin museum in Friedrichshafen.")
    deadline = time.monotonic() + 15
    while len(sdk.inboxes.messages.list(B).messages) < 3:
        assert time.monotonic() < deadline, "bob never received the three messages"
        time.sleep(0.05)
    yield sdk


def _subjects(found: Any) -> list[str]:
    return sorted(m.subject for m in found.messages)


def test_search_finds_a_subject_word_and_highlights_it(client: AgentMail) -> None:
    found = client.inboxes.messages.search(B, q="invoice")
    assert _subjects(found) == ["Quarterly invoice"]
    assert found.messages[0].highlights.subject == ["Quarterly **invoice**"]
    assert found.messages[0].highlights.text is None  # only fields that matched have a key


def test_search_finds_by_sender_address(client: AgentMail) -> None:
    found = client.inboxes.messages.search(B, q=A)
    assert _subjects(found) == ["Lunch plans", "Quarterly invoice"]
    assert all("**alice**@**search**.**example**.**test**" in m.highlights.from_[0] for m in found.messages)


def test_search_finds_a_body_word_with_a_fragment(client: AgentMail) -> None:
    found = client.inboxes.messages.search(B, q="Zeppelin")
    assert _subjects(found) == ["Holiday", "Quarterly invoice"]
    for m in found.messages:
        assert any("**zeppelin**" in fragment for fragment in m.highlights.text)


def test_search_is_scoped_to_the_inbox_and_the_key(client: AgentMail, shared_server: AgentpostServer) -> None:
    assert client.inboxes.messages.search(C, q="invoice").messages == []
    assert _subjects(client.inboxes.messages.search(A, q="invoice")) == ["Quarterly invoice"]  # the sent copy
    with shared_server.client() as http:
        key = http.post("/v0/api-keys", json={"name": "carol only", "inbox_id": C}).json()["api_key"]
    carol = _sdk(shared_server, key)
    with pytest.raises(NotFoundError):
        carol.inboxes.messages.search(B, q="invoice")
    with pytest.raises(NotFoundError):
        carol.inboxes.threads.search(B, q="invoice")
    assert _subjects(carol.inboxes.messages.search(C, q="zeppelin")) == ["Holiday"]


def test_search_pages_walk_every_match_once(client: AgentMail) -> None:
    first = client.inboxes.messages.search(B, q="zeppelin", limit=1)
    assert first.count == 1 and first.next_page_token
    second = client.inboxes.messages.search(B, q="zeppelin", limit=1, page_token=first.next_page_token)
    assert second.count == 1 and second.next_page_token is None
    assert {first.messages[0].subject, second.messages[0].subject} == {"Holiday", "Quarterly invoice"}


def test_thread_search_answers_threads_with_highlights(client: AgentMail) -> None:
    found = client.inboxes.threads.search(B, q="zeppelin")
    assert sorted(t.subject for t in found.threads) == ["Holiday", "Quarterly invoice"]
    assert all(any("**zeppelin**" in f for f in t.highlights.text) for t in found.threads)


def test_a_query_without_words_is_refused(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        response = http.get(f"/v0/inboxes/{B}/messages/search", params={"q": "!!"})
    assert response.status_code == 422 and response.json()["errors"][0]["path"] == "q"


def test_trashed_mail_is_hidden_from_search_unless_asked_for(client: AgentMail, shared_server: AgentpostServer) -> None:
    lunch = client.inboxes.messages.search(B, q="noon").messages[0]
    client.inboxes.messages.update(B, lunch.message_id, add_labels="trash")
    try:
        assert client.inboxes.messages.search(B, q="noon").messages == []
        assert client.inboxes.threads.search(B, q="noon").threads == []
        with shared_server.client() as http:
            path = f"/v0/inboxes/{B}/messages/search"
            shown = http.get(path, params={"q": "noon", "include_trash": "true"}).json()
        assert [m["subject"] for m in shown["messages"]] == ["Lunch plans"]
        assert shown["messages"][0]["highlights"] == {"text": ["**Noon** at the usual place?"]}
    finally:
        client.inboxes.messages.update(B, lunch.message_id, remove_labels="trash")
    assert _subjects(client.inboxes.messages.search(B, q="noon")) == ["Lunch plans"]


def test_labels_are_added_and_removed_on_messages_and_threads(client: AgentMail) -> None:
    holiday = client.inboxes.messages.search(B, q="holiday").messages[0]
    updated = client.inboxes.messages.update(B, holiday.message_id, add_labels=["travel"], remove_labels="unread")
    assert "travel" in updated.labels and "unread" not in updated.labels
    thread = client.inboxes.threads.update(B, holiday.thread_id, add_labels="later")
    assert {"travel", "later", "received"} <= set(thread.labels)
    thread = client.inboxes.threads.update(B, holiday.thread_id, remove_labels=["later", "travel"])
    assert not {"travel", "later"} & set(thread.labels)
    assert set(client.inboxes.messages.get(B, holiday.message_id).labels) == {"received"}


@pytest.mark.parametrize(
    "change",
    [
        {"add_labels": ["sent"]},
        {"remove_labels": "received"},
        {"add_labels": "unauthenticated"},
        {"remove_labels": ["blocked"]},
    ],
)
def test_system_labels_cannot_be_changed(client: AgentMail, shared_server: AgentpostServer, change: Any) -> None:
    message = client.inboxes.messages.search(B, q="invoice").messages[0]
    with pytest.raises(ApiError) as refused:
        client.inboxes.messages.update(B, message.message_id, **change)
    assert refused.value.status_code == 422
    assert "system labels cannot be changed" in refused.value.body["message"]
    with pytest.raises(ApiError) as refused:
        client.inboxes.threads.update(B, message.thread_id, **change)
    assert refused.value.status_code == 422
    with shared_server.client() as http:
        batch = http.post(
            f"/v0/inboxes/{B}/messages/batch-update", json={"message_ids": [message.message_id], **change}
        )
    assert batch.status_code == 422


def test_batch_update_changes_every_found_message_and_skips_unknown_ids(client: AgentMail) -> None:
    ids = [m.message_id for m in client.inboxes.messages.list(B).messages]
    done = client.inboxes.messages.batch_update(
        B, message_ids=[*ids, "<nobody@nowhere.test>"], add_labels="reviewed", remove_labels=["unread"]
    )
    assert done.limit == len(ids) + 1 and done.count == len(ids)
    assert [u.message_id for u in done.updates] == ids
    fetched = client.inboxes.messages.batch_get(B, message_ids=[*ids, "<nobody@nowhere.test>"])
    assert fetched.count == len(ids) and fetched.limit == len(ids) + 1
    assert all("reviewed" in m.labels and "unread" not in m.labels for m in fetched.messages)
    assert all("reviewed" in t.labels for t in client.inboxes.threads.list(B, labels=["reviewed"]).threads)
    client.inboxes.messages.batch_update(B, message_ids=ids, remove_labels="reviewed")
    assert client.inboxes.messages.list(B, labels=["reviewed"]).messages == []


def test_batch_update_needs_a_change_and_at_most_50_ids(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        path = f"/v0/inboxes/{B}/messages/batch-update"
        assert http.post(path, json={"message_ids": ["<a@b>"]}).status_code == 422
        many = [f"<{i}@x>" for i in range(51)]
        assert http.post(path, json={"message_ids": many, "add_labels": "x"}).status_code == 422


def test_search_is_served_on_the_wire_without_the_sdk(shared_server: AgentpostServer) -> None:
    # Guards the route order: GET .../messages/search must not be read as a message id.
    response = httpx.get(
        f"{shared_server.http_url}/v0/inboxes/{B}/messages/search",
        params={"q": "invoice"},
        headers={"authorization": f"Bearer {shared_server.api_key}"},
    )
    assert response.status_code == 200 and set(response.json()) >= {"count", "limit", "messages"}
