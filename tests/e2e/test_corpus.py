"""Every real-world bounce in the shared corpus is accepted over SMTP, stored and readable."""

from __future__ import annotations

import smtplib

from conftest import TESTDATA
from mailclient import setup_inbox, smtp, wait_list
from serverproc import AgentpostServer

BOUNCES = sorted((TESTDATA / "bounces").glob("*.eml"))


def test_corpus_is_present() -> None:
    assert len(BOUNCES) > 250


def test_every_bounce_file_is_accepted_and_readable_through_the_api(server: AgentpostServer) -> None:
    with server.client() as http:
        inbox = setup_inbox(http, "bounces@corpus.example.test")
        sent = 0
        with smtp(server.mx_host, server.mx_port) as client:
            for path in BOUNCES:
                raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                client.mail("")
                client.rcpt(inbox)
                try:
                    code, reply = client.data(raw)
                except smtplib.SMTPDataError as exc:  # pragma: no cover - reported below
                    code, reply = exc.smtp_code, exc.smtp_error
                assert code == 250, (path.name, code, reply)
                sent += 1
        messages = wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", sent, timeout=60)
        assert len(messages) == sent
        unreadable = []
        bounce_labelled = 0
        for item in messages:
            full = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}")
            if full.status_code != 200:
                unreadable.append((item["message_id"], full.status_code))
                continue
            body = full.json()
            if "bounce" in body["labels"]:
                bounce_labelled += 1
            raw = http.get(f"/v0/inboxes/{inbox}/messages/{item['message_id']}/raw")
            if raw.status_code != 200:
                unreadable.append((item["message_id"], raw.status_code))
        assert not unreadable
        # Most of the corpus is RFC 3464 reports; they are labelled for loop protection.
        assert bounce_labelled > len(messages) // 2
