"""Compatibility suite: the official `agentmail` SDK, unchanged, against a real `agentpost serve`.

One module walks what an agent written for the hosted API does: inboxes, send, reply, reply-all,
forward, threads, drafts (scheduled too), webhooks, allow/block lists, labels, search,
pagination and the error cases. Every call goes through the SDK's own client and models, so a
wire difference (a path, a field name, a status code, an error body) fails here.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.inboxes.types import CreateInboxRequest

from serverproc import AgentpostServer
from webhookreceiver import WebhookReceiver

DOMAIN = "compat.example.test"
T = TypeVar("T")


def _client(server: AgentpostServer, key: str | None = None) -> AgentMail:
    return AgentMail(
        api_key=key or server.api_key,
        environment=AgentMailEnvironment(http=server.http_url, websockets=server.http_url.replace("http", "ws")),
    )


@pytest.fixture(scope="module")
def sdk(shared_server: AgentpostServer) -> Iterator[AgentMail]:
    client = _client(shared_server)
    client.domains.create(domain=DOMAIN)
    yield client


def _inbox(sdk: AgentMail, prefix: str, display_name: str | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    request = CreateInboxRequest(username=name, domain=DOMAIN, display_name=display_name)
    return str(sdk.inboxes.create(request=request).inbox_id)


def _until(probe: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _messages(sdk: AgentMail, inbox: str, count: int, **filters: Any) -> list[Any]:
    def probe() -> list[Any] | None:
        found = list(sdk.inboxes.messages.list(inbox, **filters).messages)
        return found if len(found) >= count else None

    return _until(probe, f"{count} messages in {inbox}")


def _status(call: Callable[[], object]) -> int:
    with pytest.raises(ApiError) as caught:
        call()
    return int(caught.value.status_code or 0)


def test_inboxes_create_get_update_list_with_pagination_and_delete(sdk: AgentMail) -> None:
    created = [_inbox(sdk, "page", display_name=f"Page {i}") for i in range(5)]
    assert sdk.inboxes.get(created[0]).display_name == "Page 0"
    updated = sdk.inboxes.update(created[0], display_name="Renamed")
    assert updated.display_name == "Renamed"

    seen: list[str] = []
    token: str | None = None
    while True:
        page = sdk.inboxes.list(limit=2, page_token=token)
        assert len(page.inboxes) <= 2
        seen.extend(str(i.inbox_id) for i in page.inboxes)
        token = page.next_page_token
        if not token:
            break
    assert set(created) <= set(seen)
    assert len(seen) == len(set(seen))  # pages do not overlap

    sdk.inboxes.delete(created[-1])
    assert _status(lambda: sdk.inboxes.get(created[-1])) == 404


def test_send_reply_reply_all_forward_and_threads(sdk: AgentMail) -> None:
    alice, bob, carol, dave = (_inbox(sdk, n) for n in ("alice", "bob", "carol", "dave"))
    attachment = {"filename": "notes.txt", "content_type": "text/plain", "content": base64.b64encode(b"hi").decode()}
    sent = sdk.inboxes.messages.send(
        alice, to=bob, cc=[carol], subject="Plan", text="Shall we meet?", attachments=[attachment], labels=["project"]
    )
    assert sent.message_id and sent.thread_id

    (received,) = _messages(sdk, bob, 1)
    assert received.subject == "Plan" and "received" in received.labels
    full = sdk.inboxes.messages.get(bob, received.message_id)
    assert full.text and "Shall we meet?" in full.text
    assert [a.filename for a in full.attachments or []] == ["notes.txt"]
    content = sdk.inboxes.messages.get_attachment(bob, received.message_id, full.attachments[0].attachment_id)
    assert content is not None

    reply = sdk.inboxes.messages.reply(bob, received.message_id, text="Yes, Tuesday.")
    everyone = sdk.inboxes.messages.reply_all(bob, received.message_id, text="Adding everyone.")
    assert reply.thread_id == everyone.thread_id
    alice_side = _messages(sdk, alice, 2, labels=["received"])
    assert [m.subject for m in alice_side] == ["Re: Plan", "Re: Plan"]
    assert {m.thread_id for m in alice_side} == {sent.thread_id}  # replies join the sender's thread
    _messages(sdk, carol, 2, labels=["received"])  # the original (cc) and the reply-all

    forwarded = sdk.inboxes.messages.forward(alice, sent.message_id, to=dave, text="FYI")
    (fwd,) = _messages(sdk, dave, 1, labels=["received"])
    assert fwd.subject == "Fwd: Plan" and forwarded.message_id

    threads = sdk.inboxes.threads.list(alice).threads
    plan = next(t for t in threads if t.thread_id == sent.thread_id)
    thread = sdk.inboxes.threads.get(alice, plan.thread_id)
    assert len(thread.messages) == 3  # the original, the reply and the reply-all
    assert [m.message_id for m in thread.messages][0] == sent.message_id

    download = sdk.inboxes.messages.get_raw(bob, received.message_id)
    raw = httpx.get(download.download_url).content  # a signed URL, as the hosted API hands out
    assert len(raw) == download.size
    assert b"DKIM-Signature:" in raw and b"Subject: Plan" in raw


def test_idempotent_sends_return_the_first_answer(sdk: AgentMail) -> None:
    a, b = _inbox(sdk, "idem-a"), _inbox(sdk, "idem-b")
    key = uuid.uuid4().hex
    first = sdk.inboxes.messages.send(a, to=b, subject="once", text="x", idempotency_key=key)
    again = sdk.inboxes.messages.send(a, to=b, subject="once", text="x", idempotency_key=key)
    assert first.message_id == again.message_id
    assert _status(lambda: sdk.inboxes.messages.send(a, to=b, subject="other", text="y", idempotency_key=key)) == 409


def test_drafts_round_trip_and_scheduled_sending(sdk: AgentMail) -> None:
    a, b = _inbox(sdk, "draft-a"), _inbox(sdk, "draft-b")
    draft = sdk.inboxes.drafts.create(a, to=[b], subject="Draft", text="first version", labels=["wip"])
    assert sdk.inboxes.drafts.get(a, draft.draft_id).text == "first version"
    sdk.inboxes.drafts.update(a, draft.draft_id, text="second version")
    assert any(d.draft_id == draft.draft_id for d in sdk.drafts.list().drafts)  # org-wide list
    sent = sdk.inboxes.drafts.send(a, draft.draft_id)
    assert sent.message_id
    (got,) = _messages(sdk, b, 1)
    assert got.subject == "Draft"
    assert _status(lambda: sdk.inboxes.drafts.get(a, draft.draft_id)) == 404  # a sent draft is gone

    when = datetime.now(UTC) + timedelta(seconds=2)
    scheduled = sdk.inboxes.drafts.create(a, to=[b], subject="Later", text="scheduled", send_at=when)
    cancelled = sdk.inboxes.drafts.create(a, to=[b], subject="Never", text="cancelled", send_at=when)
    sdk.inboxes.drafts.delete(a, cancelled.draft_id)
    assert scheduled.draft_id
    later = _until(
        lambda: [m for m in sdk.inboxes.messages.list(b).messages if m.subject == "Later"] or None, "scheduled send"
    )
    assert len(later) == 1
    time.sleep(1.5)
    assert not [m for m in sdk.inboxes.messages.list(b).messages if m.subject == "Never"]


def test_webhooks_create_list_update_deliver_and_delete(sdk: AgentMail) -> None:
    a, b = _inbox(sdk, "hook-a"), _inbox(sdk, "hook-b")
    with WebhookReceiver() as receiver:
        hook = sdk.webhooks.create(url=receiver.url, event_types=["message.received"], inbox_ids=[b])
        assert any(h.webhook_id == hook.webhook_id for h in sdk.webhooks.list().webhooks)
        assert sdk.webhooks.get(hook.webhook_id).url == receiver.url
        sdk.inboxes.messages.send(a, to=b, subject="hooked", text="x")
        _until(lambda: receiver.requests or None, "a webhook delivery")
        body = json.loads(receiver.requests[0]["body"])
        assert body["event_type"] == "message.received"
        assert "webhook-signature" in receiver.requests[0]["headers"]
        disabled = sdk.webhooks.update(hook.webhook_id, enabled=False)
        assert disabled.enabled is False
        sdk.webhooks.delete(hook.webhook_id)
        assert _status(lambda: sdk.webhooks.get(hook.webhook_id)) == 404


def test_lists_block_a_recipient_and_are_listed(sdk: AgentMail) -> None:
    a = _inbox(sdk, "list-a")
    blocked = f"blocked-{uuid.uuid4().hex[:6]}@{DOMAIN}"
    entry = sdk.inboxes.lists.create(a, "send", "block", entry=blocked, reason="compat")
    assert entry.entry == blocked
    assert [e.entry for e in sdk.inboxes.lists.list(a, "send", "block").entries] == [blocked]
    assert _status(lambda: sdk.inboxes.messages.send(a, to=blocked, subject="no", text="no")) == 403
    sdk.inboxes.lists.delete(a, "send", "block", blocked)
    assert not sdk.inboxes.lists.list(a, "send", "block").entries


def test_labels_on_messages_and_threads_and_batch_updates(sdk: AgentMail) -> None:
    a, b = _inbox(sdk, "label-a"), _inbox(sdk, "label-b")
    for i in range(3):
        sdk.inboxes.messages.send(a, to=b, subject=f"label {i}", text="x")
    received = _messages(sdk, b, 3)
    first = received[0]
    updated = sdk.inboxes.messages.update(b, first.message_id, add_labels=["important"])
    assert "important" in updated.labels
    assert [m.message_id for m in sdk.inboxes.messages.list(b, labels=["important"]).messages] == [first.message_id]
    sdk.inboxes.messages.update(b, first.message_id, remove_labels=["important"])
    assert not sdk.inboxes.messages.list(b, labels=["important"]).messages

    ids = [m.message_id for m in received]
    sdk.inboxes.messages.batch_update(b, message_ids=ids, add_labels=["triaged"])
    got = sdk.inboxes.messages.batch_get(b, message_ids=ids)
    assert all("triaged" in m.labels for m in got.messages)

    thread = sdk.inboxes.threads.update(b, first.thread_id, add_labels=["followup"])
    assert "followup" in thread.labels
    assert _status(lambda: sdk.inboxes.messages.update(b, first.message_id, remove_labels=["received"])) in (
        400,
        403,
        422,
    )


def test_search_finds_messages_and_threads(sdk: AgentMail) -> None:
    a, b = _inbox(sdk, "search-a"), _inbox(sdk, "search-b")
    word = f"zebra{uuid.uuid4().hex[:6]}"
    sdk.inboxes.messages.send(a, to=b, subject=f"About the {word}", text="Stripes everywhere.")
    sdk.inboxes.messages.send(a, to=b, subject="Unrelated", text=f"Mentions {word} in the body.")
    sdk.inboxes.messages.send(a, to=b, subject="Nothing", text="Nothing to see.")
    _messages(sdk, b, 3)
    found = sdk.inboxes.messages.search(b, q=word)
    assert {m.subject for m in found.messages} == {f"About the {word}", "Unrelated"}
    threads = sdk.inboxes.threads.search(b, q=word)
    assert len(threads.threads) == 2


def test_error_cases_come_back_as_the_sdk_expects(sdk: AgentMail, shared_server: AgentpostServer) -> None:
    a = _inbox(sdk, "err")
    assert _status(lambda: sdk.inboxes.get(f"nobody-{uuid.uuid4().hex[:6]}@{DOMAIN}")) == 404
    assert _status(lambda: sdk.inboxes.messages.get(a, "<missing@compat.example.test>")) == 404
    assert _status(lambda: _client(shared_server, "am_not_a_key").inboxes.list()) == 401
    status = _status(lambda: sdk.inboxes.messages.send(a, to="not an address", subject="x", text="x"))
    assert status in (400, 422)
    injected = _status(
        lambda: sdk.inboxes.messages.send(a, to=a, subject="x", text="x", headers={"X-A": "1\r\nBcc: x"})
    )
    assert injected == 422
