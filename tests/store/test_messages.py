"""The message store on SQLite and PostgreSQL: one-transaction batches, threading, reads."""

from __future__ import annotations

import asyncio
from typing import Any

from agentpost.model import new_id, utcnow
from agentpost.store import events as event_store
from agentpost.store import inboxes as inbox_store
from agentpost.store import messages as message_store
from agentpost.store import orgs
from agentpost.store.group_commit import GroupCommitter
from agentpost.store.messages import MessageFilter, NewMessage


async def _inbox(db: Any, address: str = "agent@store.example.test") -> tuple[str, str]:
    async with db.write() as conn:
        org = await orgs.default_organization(conn)
        await inbox_store.create(conn, org, address, address.split("@")[1], None, None, "active", None)
    return org, address


def _message(org: str, inbox: str, message_id: str, keys: list[str] | None = None, subject: str = "s") -> NewMessage:
    blob = new_id("blb_")
    return NewMessage(
        pk=new_id("msg_"),
        inbox_id=inbox,
        organization_id=org,
        message_id=message_id,
        direction="received",
        labels=["received", "unread"],
        mail_from="a@remote.test",
        header_from="A <a@remote.test>",
        from_address="a@remote.test",
        to=[inbox],
        cc=[],
        bcc=[],
        reply_to=[],
        subject=subject,
        preview="p",
        text="t",
        html=None,
        extracted_text="t",
        extracted_html=None,
        in_reply_to=(keys or [None])[0],
        references=keys or [],
        headers={"Subject": subject},
        attachments=[],
        defects=[],
        auth=None,
        size=10,
        timestamp=utcnow(),
        thread_keys=keys or [],
        raw_key=blob,
        raw=b"Subject: s\r\n\r\nt\r\n",
    )


async def test_a_reply_in_the_same_batch_joins_its_parents_thread(db: Any) -> None:
    org, inbox = await _inbox(db)
    batch = [
        _message(org, inbox, "<a@x>"),
        _message(org, inbox, "<b@x>", ["<a@x>"]),
        _message(org, inbox, "<c@x>", subject="s"),
    ]
    saved = await db.run_write(message_store.save_batch, batch)
    assert saved[0].thread_id == saved[1].thread_id != saved[2].thread_id
    async with db.read() as conn:
        thread = await message_store.get_thread_row(conn, saved[0].thread_id)
        assert thread.message_count == 2 and thread.last_message_id == "<b@x>"
        assert len(await event_store.after(conn, 0, 100)) == 3


async def test_a_later_reply_joins_the_stored_thread_and_updates_it(db: Any) -> None:
    org, inbox = await _inbox(db)
    first = (await db.run_write(message_store.save_batch, [_message(org, inbox, "<root@x>")]))[0]
    reply = _message(org, inbox, "<r2@x>", ["<unknown@x>", "<root@x>"])
    second = (await db.run_write(message_store.save_batch, [reply]))[0]
    assert second.thread_id == first.thread_id
    async with db.read() as conn:
        row = await message_store.get_thread_row(conn, first.thread_id)
        items = await message_store.list_threads(
            conn, organization_id=org, inbox_id=inbox, flt=MessageFilter(), limit=10, cursor=None
        )
    assert row.message_count == 2 and len(items) == 1


async def test_threads_are_per_inbox_even_for_the_same_references(db: Any) -> None:
    org, first = await _inbox(db, "one@store.example.test")
    _, second = await _inbox(db, "two@store.example.test")
    a = (await db.run_write(message_store.save_batch, [_message(org, first, "<p@x>")]))[0]
    b = (await db.run_write(message_store.save_batch, [_message(org, second, "<q@x>", ["<p@x>"])]))[0]
    assert a.thread_id != b.thread_id


async def test_group_committer_commits_concurrent_arrivals_and_answers_each_caller(db: Any) -> None:
    org, inbox = await _inbox(db)
    commits = 0

    def counted() -> None:
        nonlocal commits
        commits += 1

    committer: GroupCommitter[Any, Any] = GroupCommitter(db, message_store.save_batch, 64, counted)
    committer.start()
    try:
        results = await asyncio.gather(*(committer.commit([_message(org, inbox, f"<g{n}@x>")]) for n in range(200)))
    finally:
        await committer.stop()
    assert len({r[0].pk for r in results}) == 200
    assert commits < 200  # grouped: fewer transactions than messages
    async with db.read() as conn:
        assert await message_store.count(conn) == 200


async def test_label_filters_include_and_exclude(db: Any) -> None:
    org, inbox = await _inbox(db)
    spam = _message(org, inbox, "<spam@x>")
    spam.labels = ["received", "spam"]
    await db.run_write(message_store.save_batch, [spam, _message(org, inbox, "<ham@x>")])
    async with db.read() as conn:
        default = await message_store.list_messages(
            conn, organization_id=org, inbox_id=inbox, flt=MessageFilter(exclude_labels=["spam"]), limit=10, cursor=None
        )
        only_spam = await message_store.list_messages(
            conn, organization_id=org, inbox_id=inbox, flt=MessageFilter(labels=["spam"]), limit=10, cursor=None
        )
    assert [m.message_id for _, m in default] == ["<ham@x>"]
    assert [m.message_id for _, m in only_spam] == ["<spam@x>"]
