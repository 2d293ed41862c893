"""Threading across a real conversation: replies join, a shared subject alone does not."""

from __future__ import annotations

from mailclient import send_raw, setup_inbox, wait_list
from serverproc import AgentpostServer


def _mail(message_id: str, subject: str, in_reply_to: str = "", references: str = "") -> bytes:
    headers = [
        "From: Bob <bob@remote.test>",
        "To: agent@thread.example.test",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
    ]
    if in_reply_to:
        headers.append(f"In-Reply-To: {in_reply_to}")
    if references:
        headers.append(f"References: {references}")
    return ("\r\n".join(headers) + "\r\n\r\nbody of " + message_id + "\r\n").encode()


def test_reply_chain_of_three_messages_forms_one_thread_and_same_subject_alone_does_not(
    server: AgentpostServer,
) -> None:
    host, port = server.mx_host, server.mx_port
    with server.client() as http:
        inbox = setup_inbox(http, "agent@thread.example.test")
        rcpt = [inbox]
        assert send_raw(host, port, "bob@remote.test", rcpt, _mail("<m1@remote.test>", "Plan"))[0] == 250
        assert (
            send_raw(
                host,
                port,
                "bob@remote.test",
                rcpt,
                _mail("<m2@remote.test>", "Re: Plan", "<m1@remote.test>", "<m1@remote.test>"),
            )[0]
            == 250
        )
        # The third names only References (no In-Reply-To), as some clients do.
        assert (
            send_raw(
                host,
                port,
                "bob@remote.test",
                rcpt,
                _mail("<m3@remote.test>", "Re: Plan", "", "<m1@remote.test> <m2@remote.test>"),
            )[0]
            == 250
        )
        # Same subject, no references: a different conversation.
        assert send_raw(host, port, "carol@remote.test", rcpt, _mail("<other@remote.test>", "Plan"))[0] == 250

        messages = wait_list(http, f"/v0/inboxes/{inbox}/messages", "messages", 4)
        by_id = {m["message_id"]: m for m in messages}
        thread_id = by_id["<m1@remote.test>"]["thread_id"]
        assert by_id["<m2@remote.test>"]["thread_id"] == thread_id
        assert by_id["<m3@remote.test>"]["thread_id"] == thread_id
        assert by_id["<other@remote.test>"]["thread_id"] != thread_id

        thread = http.get(f"/v0/inboxes/{inbox}/threads/{thread_id}").json()
        assert thread["message_count"] == 3
        assert [m["message_id"] for m in thread["messages"]] == [
            "<m1@remote.test>",
            "<m2@remote.test>",
            "<m3@remote.test>",
        ]
        assert thread["last_message_id"] == "<m3@remote.test>"
        threads = http.get(f"/v0/inboxes/{inbox}/threads").json()
        assert threads["count"] == 2
        # Org-wide listing sees the same threads.
        assert {t["thread_id"] for t in http.get("/v0/threads").json()["threads"]} >= {thread_id}
