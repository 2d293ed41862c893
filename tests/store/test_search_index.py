"""The full-text index on SQLite and PostgreSQL: kept in step by writes and deletes, backfilled by 0012."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from test_messages import _inbox, _message

from agentpost.store import messages as message_store
from agentpost.store import search as search_store
from agentpost.store.db import MIGRATIONS, Database
from agentpost.store.search import SearchFilter, parse


def _q(text: str) -> search_store.Query:
    query = parse(text)
    assert query is not None
    return query


async def _ids(db: Any, inbox: str, org: str, text: str, exclude: list[str] | None = None) -> list[str]:
    async with db.read() as conn:
        rows = await search_store.search_messages(
            conn,
            _q(text),
            SearchFilter(inbox_id=inbox, organization_id=org, exclude_labels=exclude or []),
            limit=50,
            offset=0,
        )
    return [r.message_id for r in rows]


@pytest.mark.parametrize(
    "text, include, exclude",
    [
        ("invoice", [("invoice",)], []),
        ("Alice@Example.com", [("alice", "example", "com")], []),
        ('"see you" -spam', [("see", "you")], [("spam",)]),
        ("re: hello_world", [("re",), ("hello", "world")], []),
    ],
)
def test_queries_parse_into_phrases_of_index_tokens(text: str, include: list[Any], exclude: list[Any]) -> None:
    query = _q(text)
    assert list(query.include) == include
    assert list(query.exclude) == exclude


def test_a_query_without_words_is_none() -> None:
    assert parse(" -- !! ") is None
    assert parse("-only") is None


async def test_search_finds_subject_sender_recipient_and_body_words(db: Any) -> None:
    org, inbox = await _inbox(db)
    first = _message(org, inbox, "<one@x>", subject="Quarterly invoice")
    first.text = "Please find the numbers attached. Regards"
    second = _message(org, inbox, "<two@x>", subject="Lunch")
    second.header_from = "Carol <carol@remote.test>"
    second.text = "Shall we meet at noon?"
    await db.run_write(message_store.save_batch, [first, second])
    assert await _ids(db, inbox, org, "invoice") == ["<one@x>"]
    assert await _ids(db, inbox, org, "numbers") == ["<one@x>"]
    assert await _ids(db, inbox, org, "carol@remote.test") == ["<two@x>"]
    assert await _ids(db, inbox, org, "carol") == ["<two@x>"]
    assert sorted(await _ids(db, inbox, org, inbox)) == ["<one@x>", "<two@x>"]  # the recipient
    assert await _ids(db, inbox, org, "noon -lunch") == []
    assert await _ids(db, inbox, org, "invoice", exclude=["unread"]) == []


async def test_deleted_mail_leaves_the_index(db: Any) -> None:
    org, inbox = await _inbox(db)
    saved = await db.run_write(message_store.save_batch, [_message(org, inbox, "<gone@x>", subject="Ephemeral")])
    assert await _ids(db, inbox, org, "ephemeral") == ["<gone@x>"]
    async with db.write() as conn:
        await message_store.delete_thread(conn, saved[0].thread_id)
    assert await _ids(db, inbox, org, "ephemeral") == []


async def test_migration_0012_indexes_existing_messages(database_url: str) -> None:
    database = Database(database_url)

    def to(revision: str) -> Any:
        def run(sync_conn: sa.Connection) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = sync_conn
            if revision == "0011":
                command.upgrade(cfg, revision)
            else:
                command.upgrade(cfg, "head")

        return run

    try:
        async with database.write() as conn:
            await conn.run_sync(to("0011"))
        org, inbox = await _inbox(database)
        old = _message(org, inbox, "<old@x>", subject="Archaeology")
        await database.run_write(message_store.save_batch, [old])
        async with database.write() as conn:
            await conn.run_sync(to("head"))
        assert await _ids(database, inbox, org, "archaeology") == ["<old@x>"]
    finally:
        await database.close()


async def test_thread_search_ranks_threads_by_their_best_message(db: Any) -> None:
    org, inbox = await _inbox(db)
    root = _message(org, inbox, "<root@x>", subject="Zeppelin trip")
    reply = _message(org, inbox, "<reply@x>", ["<root@x>"], subject="Re: Zeppelin trip")
    other = _message(org, inbox, "<other@x>", subject="Museum")
    other.text = "the zeppelin museum"
    hidden = _message(org, inbox, "<hidden@x>", subject="Zeppelin spam")
    hidden.labels = ["received", "spam"]
    await db.run_write(message_store.save_batch, [root, reply, other, hidden])
    async with db.read() as conn:
        rows = await search_store.search_threads(
            conn,
            _q("zeppelin"),
            SearchFilter(inbox_id=inbox, organization_id=org, exclude_labels=["spam"]),
            ["spam"],
            limit=10,
            offset=0,
        )
    assert [r.subject for r in rows] == ["Zeppelin trip", "Museum"]  # subject hits outrank body hits


@pytest.mark.postgresql
async def test_postgresql_search_uses_the_expression_index(db: Any) -> None:
    # SEARCH_VECTOR must repeat the index expression of migration 0012 exactly, or PostgreSQL
    # answers every search with a sequential scan.
    sql = (
        "EXPLAIN SELECT messages.id FROM messages WHERE "
        + search_store.SEARCH_VECTOR
        + " @@ to_tsquery('simple'::regconfig, 'invoice')"
    )
    async with db.read() as conn:
        await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = " ".join(str(r[0]) for r in (await conn.execute(sa.text(sql))).all())
    assert "ix_messages_search" in plan
