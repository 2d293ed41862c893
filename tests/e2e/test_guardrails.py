"""Guardrails through a real `agentpost serve`: allow/block lists (send, receive, reply; org and inbox
scope), default deny, per-inbox send caps, and RFC 3834 loop protection."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment

from mailclient import smtp
from serverproc import AgentpostServer

DOMAIN = "guard.example.test"


@pytest.fixture(scope="module")
def http(shared_server: AgentpostServer) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        client.post("/v0/domains", json={"domain": DOMAIN}).raise_for_status()
        yield client


@pytest.fixture(scope="module")
def sdk(shared_server: AgentpostServer, http: httpx.Client) -> AgentMail:
    return AgentMail(
        api_key=shared_server.api_key,
        environment=AgentMailEnvironment(http=shared_server.http_url, websockets="ws://unused"),
    )


def inbox(http: httpx.Client, username: str, **settings: Any) -> str:
    response = http.post("/v0/inboxes", json={"username": username, "domain": DOMAIN, **settings})
    response.raise_for_status()
    return str(response.json()["inbox_id"])


def send(http: httpx.Client, sender: str, to: str, subject: str = "hello") -> httpx.Response:
    return http.post(f"/v0/inboxes/{sender}/messages/send", json={"to": to, "subject": subject, "text": "hi"})


def reply(http: httpx.Client, sender: str, message_id: str) -> httpx.Response:
    return http.post(f"/v0/inboxes/{sender}/messages/{message_id}/reply", json={"text": "answer"})


def mx(server: AgentpostServer, mail_from: str, rcpt: str, raw: bytes) -> tuple[int, str]:
    """One SMTP transaction to the MX; the final reply (RCPT or DATA)."""
    with smtp(server.mx_host, server.mx_port) as client:
        client.mail(mail_from)
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        try:
            code, text = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        return code, text.decode()


def wait_message(http: httpx.Client, inbox_id: str, subject: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = http.get(f"/v0/inboxes/{inbox_id}/messages", params={"limit": 100}).json()["messages"]
        for item in found:
            if item.get("subject") == subject:
                return dict(item)
        time.sleep(0.05)
    raise AssertionError(f"{inbox_id}: no message {subject!r}")


def test_lists_api_round_trips_through_the_sdk(sdk: AgentMail, http: httpx.Client) -> None:
    owner = inbox(http, "lists-owner")
    created = sdk.lists.create("send", "block", entry="Someone@Listed.Example", reason="test")
    assert (created.entry, created.entry_type, created.list_type, created.direction) == (
        "someone@listed.example",
        "email",
        "block",
        "send",
    )
    assert [e.entry for e in sdk.lists.list("send", "block").entries] == ["someone@listed.example"]
    assert sdk.lists.get("send", "block", "someone@listed.example").reason == "test"
    scoped = sdk.inboxes.lists.create(owner, "receive", "allow", entry="listed.example")
    assert scoped.entry_type == "domain"
    assert [e.entry for e in sdk.inboxes.lists.list(owner, "receive", "allow").entries] == ["listed.example"]
    assert sdk.lists.list("receive", "allow").entries == []  # inbox entries are not org entries
    sdk.lists.delete("send", "block", "someone@listed.example")
    sdk.inboxes.lists.delete(owner, "receive", "allow", "listed.example")
    with pytest.raises(ApiError) as err:
        sdk.lists.get("send", "block", "someone@listed.example")
    assert err.value.status_code == 404
    assert http.post("/v0/lists/send/block", json={"entry": "not an entry"}).status_code in (400, 422)
    assert http.get("/v0/lists/sideways/block").status_code == 404


def test_send_block_list_refuses_a_send_naming_the_recipient(http: httpx.Client) -> None:
    sender = inbox(http, "blocked-sender")
    http.post(f"/v0/inboxes/{sender}/lists/send/block", json={"entry": "competitor.example"}).raise_for_status()
    refused = send(http, sender, "ceo@competitor.example")
    assert refused.status_code == 403
    assert "ceo@competitor.example" in refused.json()["message"]
    assert send(http, sender, f"blocked-sender@{DOMAIN}").status_code == 200


def test_default_deny_send_admits_only_allowed_recipients(http: httpx.Client) -> None:
    sender = inbox(http, "deny-sender", default_deny={"send": True})
    friend, stranger = inbox(http, "deny-friend"), inbox(http, "deny-stranger")
    assert http.get(f"/v0/inboxes/{sender}").json()["default_deny"] == {"send": True, "receive": False}
    assert send(http, sender, friend).status_code == 403  # nothing allowed yet
    http.post(f"/v0/inboxes/{sender}/lists/send/allow", json={"entry": friend}).raise_for_status()
    assert send(http, sender, friend).status_code == 200
    refused = send(http, sender, stranger)
    assert refused.status_code == 403 and stranger in refused.json()["message"]


def test_most_specific_scope_wins_and_block_beats_allow_at_the_same_level(http: httpx.Client) -> None:
    sender = inbox(http, "scope-sender")
    other = inbox(http, "scope-other")
    # Org: block the whole partner domain, allow one address of it.
    http.post("/v0/lists/send/block", json={"entry": "partner.example"}).raise_for_status()
    http.post("/v0/lists/send/allow", json={"entry": "desk@partner.example"}).raise_for_status()
    # Inbox: allow the domain again (beats the org domain block), but block one address.
    http.post(f"/v0/inboxes/{sender}/lists/send/allow", json={"entry": "partner.example"}).raise_for_status()
    http.post(f"/v0/inboxes/{sender}/lists/send/block", json={"entry": "desk@partner.example"}).raise_for_status()
    try:
        assert send(http, sender, "sales@partner.example").status_code == 200  # inbox domain > org domain
        assert send(http, sender, "desk@partner.example").status_code == 403  # inbox address > org address
        assert send(http, other, "desk@partner.example").status_code == 200  # org address > org domain
        assert send(http, other, "sales@partner.example").status_code == 403  # org domain block
        # Same specificity: block beats allow.
        http.post(f"/v0/inboxes/{other}/lists/send/allow", json={"entry": "twice.example"}).raise_for_status()
        http.post(f"/v0/inboxes/{other}/lists/send/block", json={"entry": "twice.example"}).raise_for_status()
        assert send(http, other, "x@twice.example").status_code == 403
    finally:
        http.delete("/v0/lists/send/block/partner.example")
        http.delete("/v0/lists/send/allow/desk@partner.example")


def test_receive_block_is_refused_at_the_mx_with_550_5_7_1(shared_server: AgentpostServer, http: httpx.Client) -> None:
    rcpt = inbox(http, "mx-guarded")
    http.post(f"/v0/inboxes/{rcpt}/lists/receive/block", json={"entry": "spammer@evil.example"}).raise_for_status()
    raw = f"From: <spammer@evil.example>\r\nTo: {rcpt}\r\nSubject: buy now\r\n\r\nbuy\r\n".encode()
    code, text = mx(shared_server, "spammer@evil.example", rcpt, raw)
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    raw = f"From: <friend@evil.example>\r\nTo: {rcpt}\r\nSubject: hello friend\r\n\r\nhi\r\n".encode()
    assert mx(shared_server, "friend@evil.example", rcpt, raw)[0] == 250
    wait_message(http, rcpt, "hello friend")
    names = [m.get("subject") for m in http.get(f"/v0/inboxes/{rcpt}/messages").json()["messages"]]
    assert "buy now" not in names


def test_reply_direction_admits_only_replies_to_mail_the_inbox_sent(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    rcpt = inbox(http, "reply-only", default_deny={"receive": True})
    http.post(f"/v0/inboxes/{rcpt}/lists/reply/allow", json={"entry": "vendor.example"}).raise_for_status()
    sent = send(http, rcpt, "quotes@vendor.example", "request for quote")
    assert sent.status_code == 200
    ours = sent.json()["message_id"]
    cold = f"From: <quotes@vendor.example>\r\nTo: {rcpt}\r\nSubject: cold pitch\r\n\r\nnew mail\r\n".encode()
    code, text = mx(shared_server, "quotes@vendor.example", rcpt, cold)
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    forged = (
        f"From: <quotes@vendor.example>\r\nTo: {rcpt}\r\nSubject: forged reply\r\n"
        "In-Reply-To: <never-sent@vendor.example>\r\n\r\nnot a reply to us\r\n"
    ).encode()
    assert mx(shared_server, "quotes@vendor.example", rcpt, forged)[0] == 550
    answer = (
        f"From: <quotes@vendor.example>\r\nTo: {rcpt}\r\nSubject: Re: request for quote\r\n"
        f"In-Reply-To: {ours}\r\nReferences: {ours}\r\n\r\nour price\r\n"
    ).encode()
    assert mx(shared_server, "quotes@vendor.example", rcpt, answer)[0] == 250
    wait_message(http, rcpt, "Re: request for quote")


def test_per_hour_cap_answers_429_with_retry_after(http: httpx.Client) -> None:
    sender = inbox(http, "capped", send_limits={"per_hour": 3})
    target = inbox(http, "capped-target")
    for n in range(3):
        assert send(http, sender, target, f"capped {n}").status_code == 200
    over = send(http, sender, target, "capped 3")
    assert over.status_code == 429, over.text
    assert 3000 <= int(over.headers["retry-after"]) <= 3600
    # Lifting the cap lifts the refusal.
    http.patch(f"/v0/inboxes/{sender}", json={"send_limits": {"per_hour": None}}).raise_for_status()
    assert send(http, sender, target, "uncapped").status_code == 200


def test_auto_submitted_mail_is_not_answered_unless_the_inbox_allows_it(
    shared_server: AgentpostServer, http: httpx.Client
) -> None:
    rcpt = inbox(http, "no-loops")
    auto = (
        f"From: <vacation@remote.example>\r\nTo: {rcpt}\r\nSubject: Out of office\r\n"
        "Auto-Submitted: auto-replied\r\nMessage-ID: <ooo-1@remote.example>\r\n\r\nI am away.\r\n"
    ).encode()
    assert mx(shared_server, "vacation@remote.example", rcpt, auto)[0] == 250
    bulk = (
        f"From: <news@remote.example>\r\nTo: {rcpt}\r\nSubject: Newsletter\r\n"
        "Precedence: bulk\r\nMessage-ID: <news-1@remote.example>\r\n\r\nnews\r\n"
    ).encode()
    assert mx(shared_server, "news@remote.example", rcpt, bulk)[0] == 250
    bounce = (
        f"From: <postmaster@remote.example>\r\nTo: {rcpt}\r\nSubject: note\r\n"
        "Message-ID: <null-1@remote.example>\r\n\r\nfrom the null sender\r\n"
    ).encode()
    assert mx(shared_server, "", rcpt, bounce)[0] == 250
    human = (
        f"From: <person@remote.example>\r\nTo: {rcpt}\r\nSubject: Question\r\n"
        "Message-ID: <human-1@remote.example>\r\n\r\nhow are you?\r\n"
    ).encode()
    assert mx(shared_server, "person@remote.example", rcpt, human)[0] == 250
    for subject in ("Out of office", "Newsletter", "note", "Question"):
        wait_message(http, rcpt, subject)
    for message_id in ("<ooo-1@remote.example>", "<news-1@remote.example>", "<null-1@remote.example>"):
        refused = reply(http, rcpt, message_id)
        assert refused.status_code == 403 and "automatic" in refused.text + "null", refused.text
    assert reply(http, rcpt, "<human-1@remote.example>").status_code == 200
    http.patch(f"/v0/inboxes/{rcpt}", json={"loop_protection": {"answer_auto_submitted": True}}).raise_for_status()
    assert reply(http, rcpt, "<ooo-1@remote.example>").status_code == 200


def test_thread_cap_stops_two_agents_mailing_each_other_forever(http: httpx.Client) -> None:
    ping = inbox(http, "ping", loop_protection={"per_thread_per_hour": 3})
    pong = inbox(http, "pong")
    first = send(http, ping, pong, "ping pong")
    assert first.status_code == 200
    last = first.json()["message_id"]
    statuses = []
    for _ in range(6):
        answered = reply(http, pong, last)
        assert answered.status_code == 200, answered.text
        response = reply(http, ping, answered.json()["message_id"])
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
        last = response.json()["message_id"]
    # ping sent the first message and two replies into its thread; the third reply is refused.
    assert statuses == [200, 200, 429], statuses
    assert int(response.headers["retry-after"]) > 0
    # Another thread is not affected.
    assert send(http, ping, pong, "a new subject").status_code == 200
