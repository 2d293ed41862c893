"""Sending through the agentmail SDK between hosted inboxes: send, reply, reply-all, forward,
idempotency, header injection, and a clear refusal for domains not hosted here."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import dkim
import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.inboxes.types import CreateInboxRequest

from serverproc import AgentpostServer

DOMAIN = "send.example.test"


@pytest.fixture(scope="module")
def client(shared_server: AgentpostServer) -> Iterator[AgentMail]:
    sdk = AgentMail(
        api_key=shared_server.api_key,
        environment=AgentMailEnvironment(http=shared_server.http_url, websockets="ws://unused"),
    )
    sdk.domains.create(domain=DOMAIN)
    for name, display in (("alice", "Alice Agent"), ("bob", None), ("carol", None)):
        sdk.inboxes.create(request=CreateInboxRequest(username=name, domain=DOMAIN, display_name=display))
    yield sdk


def _wait(client: AgentMail, inbox: str, count: int, labels: list[str] | None = None) -> list[object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = client.inboxes.messages.list(inbox, labels=labels).messages
        if len(found) >= count:
            return list(found)
        time.sleep(0.05)
    raise AssertionError(f"{inbox}: expected {count} messages")


A, B, C = (f"{n}@{DOMAIN}" for n in ("alice", "bob", "carol"))


def test_send_reply_reply_all_and_forward_between_hosted_inboxes(
    client: AgentMail, shared_server: AgentpostServer
) -> None:
    sent = client.inboxes.messages.send(
        A,
        to=B,
        cc=[C],
        subject="Quarterly numbers",
        text="Hi Bob, the numbers are attached.",
        attachments=[
            {"filename": "q3.csv", "content_type": "text/csv", "content": base64.b64encode(b"q,3\n").decode()}
        ],
    )
    assert sent.message_id.endswith(f"@{DOMAIN}>")
    received = client.inboxes.messages.get(B, sent.message_id)
    assert received.subject == "Quarterly numbers"
    assert received.from_ == f"Alice Agent <{A}>"
    assert received.attachments and received.attachments[0].filename == "q3.csv"
    assert "received" in received.labels

    # The sender's copy is in its own thread, labelled sent, and carries two DKIM signatures that verify.
    own = client.inboxes.messages.get(A, sent.message_id)
    assert own.thread_id == sent.thread_id and "sent" in own.labels
    raw = httpx.get(client.inboxes.messages.get_raw(A, sent.message_id).download_url).content
    records = {r.name: r.value for r in client.domains.get(DOMAIN).records if "._domainkey." in r.name}
    assert raw.count(b"DKIM-Signature:") == 2
    for index in range(2):
        assert dkim.DKIM(raw).verify(
            idx=index, dnsfunc=lambda name, timeout=5: records[name.decode().rstrip(".")].encode()
        )

    # Bob replies; it lands in Alice's thread with the sent copy.
    reply = client.inboxes.messages.reply(B, sent.message_id, text="Thanks Alice!")
    at_alice = client.inboxes.messages.get(A, reply.message_id)
    assert at_alice.thread_id == sent.thread_id
    assert at_alice.subject == "Re: Quarterly numbers" and at_alice.in_reply_to == sent.message_id
    thread = client.inboxes.threads.get(A, sent.thread_id)
    assert [m.message_id for m in thread.messages] == [sent.message_id, reply.message_id]

    # Carol replies to all: Alice and Bob get it, Carol is not among the recipients.
    reply_all = client.inboxes.messages.reply_all(C, sent.message_id, text="Looks good to me.")
    for inbox in (A, B):
        message = client.inboxes.messages.get(inbox, reply_all.message_id)
        assert C not in " ".join(message.to + (message.cc or []))
    own_copy = client.inboxes.messages.get(C, reply_all.message_id)
    assert "sent" in own_copy.labels

    # Bob forwards Alice's message to Carol, attachment included.
    forwarded = client.inboxes.messages.forward(B, sent.message_id, to=C, text="FYI")
    at_carol = client.inboxes.messages.get(C, forwarded.message_id)
    assert at_carol.subject == "Fwd: Quarterly numbers"
    assert "FYI" in (at_carol.text or "") and "the numbers are attached" in (at_carol.text or "")
    assert at_carol.attachments and at_carol.attachments[0].filename == "q3.csv"


@pytest.mark.parametrize("size", [1_000, 200_000])  # composed on the event loop / in a thread (INLINE_BUILD_BYTES)
def test_an_attachment_of_any_size_arrives_whole_in_a_signed_message(client: AgentMail, size: int) -> None:
    content = bytes(range(256)) * (size // 256)
    sent = client.inboxes.messages.send(
        A,
        to=B,
        subject=f"attachment of {size} bytes",
        text="attached",
        attachments=[{"filename": "blob.bin", "content": base64.b64encode(content).decode()}],
    )
    received = client.inboxes.messages.get(B, sent.message_id)
    assert received.attachments and received.attachments[0].size == len(content)
    raw = httpx.get(client.inboxes.messages.get_raw(A, sent.message_id).download_url).content
    assert base64.b64encode(content)[:76] in raw
    records = {r.name: r.value for r in client.domains.get(DOMAIN).records if "._domainkey." in r.name}
    for index in range(2):
        assert dkim.DKIM(raw).verify(
            idx=index, dnsfunc=lambda name, timeout=5: records[name.decode().rstrip(".")].encode()
        )


def test_idempotency_key_returns_the_original_result_and_refuses_a_different_body(client: AgentMail) -> None:
    first = client.inboxes.messages.send(A, to=B, subject="once", text="only once", idempotency_key="k-123")
    again = client.inboxes.messages.send(A, to=B, subject="once", text="only once", idempotency_key="k-123")
    assert (again.message_id, again.thread_id) == (first.message_id, first.thread_id)
    assert len([m for m in _wait(client, B, 1) if getattr(m, "subject", "") == "once"]) == 1
    with pytest.raises(ApiError) as conflict:
        client.inboxes.messages.send(A, to=B, subject="once", text="different", idempotency_key="k-123")
    assert conflict.value.status_code == 409


@pytest.mark.parametrize(
    "fields, path",
    [
        ({"headers": {"X-Note": "a\r\nBcc: evil@remote.test"}}, "headers"),
        ({"subject": "=?utf-8?q?hi=0D=0AInjected:_x?="}, "subject"),
        ({"headers": {"Bcc\r\nX": "v"}}, "headers"),
        ({"headers": {"From": "ceo@elsewhere.test"}}, "headers"),
        ({"to": "not an address"}, "to"),
    ],
)
def test_header_injection_and_bad_input_are_refused_with_422(
    shared_server: AgentpostServer, client: AgentMail, fields: dict[str, object], path: str
) -> None:
    body = {"to": B, "subject": "s", "text": "t", **fields}
    with shared_server.client() as http:
        response = http.post(f"/v0/inboxes/{A}/messages/send", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["path"].startswith(path)


def test_remote_recipients_are_queued_and_a_dns_failure_defers_them(shared_server: AgentpostServer) -> None:
    with shared_server.client() as http:
        response = http.post(f"/v0/inboxes/{A}/messages/send", json={"to": "x@elsewhere.test", "text": "t"})
        assert response.status_code == 200, response.text
        message_id = response.json()["message_id"]
        deadline = time.monotonic() + 15
        attempts: list[dict[str, object]] = []
        while time.monotonic() < deadline and not attempts:
            attempts = http.get(f"/v0/inboxes/{A}/messages/{message_id}/deliveries").json()["deliveries"]
            time.sleep(0.1)
    # The test servers' resolver is a dead loopback port: a temporary DNS failure, retried later.
    assert attempts and attempts[0]["outcome"] == "deferred" and attempts[0]["enhanced"] == "4.4.3"


def test_inbox_scoped_key_cannot_send_from_another_inbox(shared_server: AgentpostServer, client: AgentMail) -> None:
    with shared_server.client() as http:
        key = http.post("/v0/api-keys", json={"name": "bob only", "inbox_id": B}).json()["api_key"]
        response = httpx.post(
            f"{shared_server.http_url}/v0/inboxes/{A}/messages/send",
            json={"to": C, "text": "spoof"},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 404
