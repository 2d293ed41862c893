"""Drafts through a real server and the agentmail SDK: the round trip, reply drafts, scheduled
sending (send_at) and sends held for human approval (send_requires_approval)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from agentmail import AgentMail, SendAttachment
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from agentmail.inboxes.types import CreateInboxRequest

from serverproc import AgentpostServer

DOMAIN = "drafts.example.test"


def sdk(server: AgentpostServer, key: str | None = None) -> AgentMail:
    return AgentMail(
        api_key=key or server.api_key, environment=AgentMailEnvironment(http=server.http_url, websockets="ws://x")
    )


@pytest.fixture(scope="module")
def client(shared_server: AgentpostServer) -> Iterator[AgentMail]:
    org = sdk(shared_server)
    org.domains.create(domain=DOMAIN)
    yield org


def _inbox(client: AgentMail, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return str(client.inboxes.create(request=CreateInboxRequest(username=name, domain=DOMAIN)).inbox_id)


def _messages(client: AgentMail, inbox: str) -> list[Any]:
    return list(client.inboxes.messages.list(inbox).messages)


def _wait_messages(client: AgentMail, inbox: str, count: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _messages(client, inbox)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{inbox}: expected {count} messages")


def _events(server: AgentpostServer, inbox: str, event_type: str) -> list[dict[str, Any]]:
    with server.client() as http:
        page = http.get("/v0/events", params={"event_types": event_type, "inbox_ids": inbox}).json()
    return list(page["events"])


def _inbox_key(server: AgentpostServer, inbox: str) -> str:
    with server.client() as http:
        response = http.post("/v0/api-keys", json={"name": "agent", "inbox_id": inbox})
        response.raise_for_status()
        return str(response.json()["api_key"])


def test_draft_create_list_get_update_delete_and_send_round_trip(client: AgentMail) -> None:
    alice, bob = _inbox(client, "alice"), _inbox(client, "bob")
    draft = client.inboxes.drafts.create(
        alice, to=[bob], subject="Plan", text="First version", labels=["wip"], client_id="plan-1"
    )
    assert draft.draft_id and draft.inbox_id == alice and draft.to == [bob] and draft.labels == ["wip"]
    assert draft.send_status is None and draft.preview == "First version"
    # client_id makes create idempotent.
    assert client.inboxes.drafts.create(alice, to=[bob], client_id="plan-1").draft_id == draft.draft_id

    listed = client.inboxes.drafts.list(alice)
    assert listed.count == 1 and [d.draft_id for d in listed.drafts] == [draft.draft_id]
    assert draft.draft_id in {d.draft_id for d in client.drafts.list(limit=1000).drafts}
    assert client.drafts.get(draft.draft_id).subject == "Plan"

    updated = client.inboxes.drafts.update(
        alice, draft.draft_id, text="Second version", cc=[alice], add_labels=["ready"], remove_labels=["wip"]
    )
    assert updated.text == "Second version" and updated.cc == [alice] and updated.labels == ["ready"]
    assert updated.subject == "Plan"  # omitted fields stay
    assert client.inboxes.drafts.update(alice, draft.draft_id, cc=None).cc is None  # null clears

    sent = client.inboxes.drafts.send(alice, draft.draft_id)
    received = _wait_messages(client, bob, 1)
    assert received[0].message_id == sent.message_id and received[0].subject == "Plan"
    assert client.inboxes.messages.get(bob, sent.message_id).text.strip() == "Second version"
    own = client.inboxes.messages.get(alice, sent.message_id)
    assert "sent" in own.labels and "ready" in own.labels
    # A sent draft is gone.
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(alice, draft.draft_id)

    doomed = client.inboxes.drafts.create(alice, to=[bob], text="never")
    client.inboxes.drafts.delete(alice, doomed.draft_id)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(alice, doomed.draft_id)
    assert client.inboxes.drafts.list(alice).count == 0


def test_a_draft_attachment_is_downloaded_through_a_signed_link_until_the_draft_is_sent(
    client: AgentMail, shared_server: AgentpostServer
) -> None:
    alice, bob = _inbox(client, "alice"), _inbox(client, "bob")
    content = b"%PDF-1.4 quarterly figures"
    attachment = SendAttachment(
        filename="q3.pdf", content_type="application/pdf", content=base64.b64encode(content).decode()
    )
    draft = client.inboxes.drafts.create(alice, to=[bob], subject="Figures", text="attached", attachments=[attachment])
    [meta] = draft.attachments or []

    got = client.inboxes.drafts.get_attachment(alice, draft.draft_id, meta.attachment_id)
    assert got.attachment_id == meta.attachment_id and got.filename == "q3.pdf" and got.size == len(content)
    assert got.content_type == "application/pdf" and got.expires_at > datetime.now(UTC)
    # The link is the credential: no API key needed.
    download = httpx.get(got.download_url)
    assert download.status_code == 200 and download.content == content
    assert download.headers["content-type"] == "application/pdf" and "q3.pdf" in download.headers["content-disposition"]
    org_wide = client.drafts.get_attachment(draft.draft_id, meta.attachment_id)
    assert org_wide.attachment_id == meta.attachment_id and httpx.get(org_wide.download_url).content == content

    # Outside the key's scope, through another inbox, or an unknown id: 404.
    bobs = sdk(shared_server, _inbox_key(shared_server, bob))
    with pytest.raises(NotFoundError):
        bobs.drafts.get_attachment(draft.draft_id, meta.attachment_id)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get_attachment(bob, draft.draft_id, meta.attachment_id)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get_attachment(alice, draft.draft_id, "att_nope")

    # A sent draft is gone, and so are its links.
    client.inboxes.drafts.send(alice, draft.draft_id)
    assert httpx.get(got.download_url).status_code == 404


def test_a_draft_is_seen_only_through_its_inbox_and_by_keys_that_see_it(
    client: AgentMail, shared_server: AgentpostServer
) -> None:
    alice, bob = _inbox(client, "alice"), _inbox(client, "bob")
    draft = client.inboxes.drafts.create(alice, to=[bob], text="private")
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(bob, draft.draft_id)
    bobs = sdk(shared_server, _inbox_key(shared_server, bob))
    with pytest.raises(NotFoundError):
        bobs.drafts.get(draft.draft_id)
    assert bobs.drafts.list().count == 0


def test_a_reply_draft_lands_in_the_thread_with_in_reply_to(client: AgentMail) -> None:
    alice, bob = _inbox(client, "alice"), _inbox(client, "bob")
    first = client.inboxes.messages.send(alice, to=bob, subject="Lunch?", text="Tomorrow at noon?")
    _wait_messages(client, bob, 1)

    draft = client.inboxes.drafts.create(bob, in_reply_to=first.message_id, text="Noon works.")
    # Recipients, subject and threading come from the message replied to.
    assert draft.to == [alice] and draft.subject == "Re: Lunch?" and draft.in_reply_to == first.message_id
    sent = client.inboxes.drafts.send(bob, draft.draft_id)

    got = _wait_messages(client, alice, 2)
    reply = next(m for m in got if m.message_id == sent.message_id)
    assert reply.in_reply_to == first.message_id
    assert reply.thread_id == client.inboxes.messages.get(alice, first.message_id).thread_id


def test_a_scheduled_draft_is_sent_when_due_and_unscheduled_or_cancelled_ones_are_not(
    client: AgentMail, shared_server: AgentpostServer
) -> None:
    alice, bob = _inbox(client, "alice"), _inbox(client, "bob")
    soon = datetime.now(UTC) + timedelta(seconds=2)
    due = client.inboxes.drafts.create(alice, to=[bob], subject="due", text="on time", send_at=soon)
    assert due.send_status == "scheduled" and due.send_at is not None
    later = client.inboxes.drafts.create(alice, to=[bob], subject="later", text="moved", send_at=soon)
    unscheduled = client.inboxes.drafts.create(alice, to=[bob], subject="unscheduled", text="x", send_at=soon)
    cancelled = client.inboxes.drafts.create(alice, to=[bob], subject="cancelled", text="x", send_at=soon)
    client.inboxes.drafts.update(alice, later.draft_id, send_at=datetime.now(UTC) + timedelta(hours=1))
    assert client.inboxes.drafts.update(alice, unscheduled.draft_id, send_at=None).send_status is None
    client.inboxes.drafts.delete(alice, cancelled.draft_id)

    received = _wait_messages(client, bob, 1, timeout=8)
    assert datetime.now(UTC) >= soon
    time.sleep(1.5)  # a second scheduler pass: nothing else goes out
    received = _messages(client, bob)
    assert [m.subject for m in received] == ["due"]
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(alice, due.draft_id)
    assert client.inboxes.drafts.get(alice, later.draft_id).send_status == "scheduled"
    assert client.inboxes.drafts.get(alice, unscheduled.draft_id).send_status is None
    sent_events = _events(shared_server, alice, "draft.sent")
    assert [e["draft"]["draft_id"] for e in sent_events] == [due.draft_id]
    assert sent_events[0]["message_id"] == received[0].message_id


# --------------------------------------------------------------------------- approval


@pytest.fixture
def guarded(client: AgentMail, shared_server: AgentpostServer) -> tuple[str, str, str]:
    """An inbox that requires approval, a recipient inbox, and an agent's inbox-scoped key."""
    agent_inbox, bob = _inbox(client, "agent"), _inbox(client, "bob")
    with shared_server.client() as http:
        inbox = http.patch(f"/v0/inboxes/{agent_inbox}", json={"send_requires_approval": True}).json()
    assert inbox["send_requires_approval"] is True
    assert client.inboxes.get(agent_inbox).send_requires_approval is True
    return agent_inbox, bob, _inbox_key(shared_server, agent_inbox)


def _as(server: AgentpostServer, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.request(method, server.http_url + path, json=body, headers=headers)


def _held_send(server: AgentpostServer, key: str, inbox: str, to: str) -> httpx.Response:
    body = {"to": to, "subject": "Refund", "text": "I will refund you $5,000."}
    return _as(server, key, "POST", f"/v0/inboxes/{inbox}/messages/send", body)


def test_an_agents_send_on_an_inbox_requiring_approval_is_held_and_nothing_goes_out(
    client: AgentMail, shared_server: AgentpostServer, guarded: tuple[str, str, str]
) -> None:
    inbox, bob, key = guarded
    response = _held_send(shared_server, key, inbox, bob)
    assert response.status_code == 202
    held = response.json()
    assert held["status"] == "pending_approval" and held["draft_id"]

    draft = client.inboxes.drafts.get(inbox, held["draft_id"])
    assert draft.send_status == "pending_approval" and draft.subject == "Refund" and draft.to == [bob]
    # Reply and draft send are held the same way.
    first = client.inboxes.messages.send(bob, to=inbox, subject="Hi", text="hello")
    _wait_messages(client, inbox, 1)
    reply = _as(shared_server, key, "POST", f"/v0/inboxes/{inbox}/messages/{first.message_id}/reply", {"text": "hi"})
    assert reply.status_code == 202 and reply.json()["status"] == "pending_approval"
    own = sdk(shared_server, key).inboxes.drafts.create(inbox, to=[bob], text="a draft")
    sent = _as(shared_server, key, "POST", f"/v0/inboxes/{inbox}/drafts/{own.draft_id}/send", {})
    assert sent.status_code == 202 and sent.json() == {"draft_id": own.draft_id, "status": "pending_approval"}

    time.sleep(1.0)
    # Nothing was sent: no sent copy (its queue items are written with it) and nothing received.
    assert [m.message_id for m in _messages(client, inbox)] == [first.message_id]
    assert [m.message_id for m in _messages(client, bob)] == [first.message_id]
    pending = [e["draft"]["draft_id"] for e in _events(shared_server, inbox, "draft.pending_approval")]
    assert held["draft_id"] in pending and own.draft_id in pending and len(pending) == 3
    # The agent cannot lift the guardrail itself.
    lift = _as(shared_server, key, "PATCH", f"/v0/inboxes/{inbox}", {"send_requires_approval": False})
    assert lift.status_code == 403


def test_an_org_key_approves_a_held_send_and_it_is_sent(
    client: AgentMail, shared_server: AgentpostServer, guarded: tuple[str, str, str]
) -> None:
    inbox, bob, key = guarded
    held = _held_send(shared_server, key, inbox, bob).json()
    with shared_server.client() as http:
        approved = http.post(f"/v0/inboxes/{inbox}/drafts/{held['draft_id']}/approve")
        assert approved.status_code == 200
        again = http.post(f"/v0/inboxes/{inbox}/drafts/{held['draft_id']}/approve")
        assert again.status_code == 404  # sent drafts are gone
    message_id = approved.json()["message_id"]
    received = _wait_messages(client, bob, 1)
    assert received[0].message_id == message_id and received[0].subject == "Refund"
    [event] = _events(shared_server, inbox, "draft.approved")
    assert event["draft"]["draft_id"] == held["draft_id"] and event["approved_by"]
    assert [e["message_id"] for e in _events(shared_server, inbox, "draft.sent")] == [message_id]


def test_an_org_key_rejects_a_held_send_with_a_reason_and_it_is_discarded(
    client: AgentMail, shared_server: AgentpostServer, guarded: tuple[str, str, str]
) -> None:
    inbox, bob, key = guarded
    held = _held_send(shared_server, key, inbox, bob).json()
    with shared_server.client() as http:
        rejected = http.post(
            f"/v0/inboxes/{inbox}/drafts/{held['draft_id']}/reject", json={"reason": "no refunds over $100"}
        )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(inbox, held["draft_id"])
    [event] = _events(shared_server, inbox, "draft.rejected")
    assert event["draft"]["draft_id"] == held["draft_id"] and event["reason"] == "no refunds over $100"
    time.sleep(0.5)
    assert _messages(client, bob) == [] and _messages(client, inbox) == []


def test_an_inbox_scoped_key_cannot_approve_or_reject(
    client: AgentMail, shared_server: AgentpostServer, guarded: tuple[str, str, str]
) -> None:
    inbox, bob, key = guarded
    held = _held_send(shared_server, key, inbox, bob).json()
    for action in ("approve", "reject"):
        response = _as(shared_server, key, "POST", f"/v0/inboxes/{inbox}/drafts/{held['draft_id']}/{action}", {})
        assert response.status_code == 403, action
    assert client.inboxes.drafts.get(inbox, held["draft_id"]).send_status == "pending_approval"
    time.sleep(0.5)
    assert _messages(client, bob) == []


def test_an_org_keys_own_send_on_an_inbox_requiring_approval_goes_out(
    client: AgentMail, guarded: tuple[str, str, str]
) -> None:
    inbox, bob, _ = guarded
    sent = client.inboxes.messages.send(inbox, to=bob, subject="From a human", text="ok")
    assert _wait_messages(client, bob, 1)[0].message_id == sent.message_id
