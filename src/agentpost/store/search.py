"""Full-text search over messages: the query language, and its SQL on SQLite FTS5 and PostgreSQL.

What is indexed (migration 0012 builds the index; it keeps itself in step with `messages`):
the sender (`header_from`), the recipients (`to`, `cc`, `bcc`), the subject, and the body
(`text`, else `extracted_text`; the first BODY_LIMIT characters).

Both backends see the same tokens: runs of letters and digits, lower-cased, punctuation as a
separator, no stemming and no stop words. So `alice@example.com` is the phrase
`alice example com`, and a query finds the same messages on SQLite and on PostgreSQL.

- SQLite: a contentless FTS5 table `message_search` keyed by the `messages` rowid, filled and
  emptied by triggers on `messages`. The hot receive path (`messages.save_batch`) therefore
  needs no extra statement: the trigger runs inside SQLite's own multi-row INSERT.
- PostgreSQL: a GIN expression index over SEARCH_VECTOR; no column, no trigger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.store import labels as labelset
from agentpost.store.tables import messages, threads

BODY_LIMIT = 100_000  # characters of body indexed per message: bounds the cost of one insert

# Must stay character-for-character the expression of ix_messages_search in migration 0012:
# PostgreSQL uses an expression index only for a query that repeats its expression.
SEARCH_VECTOR = (
    "(setweight(to_tsvector('simple'::regconfig, regexp_replace(coalesce(messages.subject, ''),"
    " '[[:punct:]]+', ' ', 'g')), 'A')"
    " || setweight(to_tsvector('simple'::regconfig, regexp_replace(messages.header_from,"
    " '[[:punct:]]+', ' ', 'g')), 'B')"
    " || setweight(to_tsvector('simple'::regconfig, regexp_replace(coalesce(messages.\"to\"::text, '')"
    " || ' ' || coalesce(messages.cc::text, '') || ' ' || coalesce(messages.bcc::text, ''),"
    " '[[:punct:]]+', ' ', 'g')), 'C')"
    " || to_tsvector('simple'::regconfig, regexp_replace(left(coalesce(messages.text,"
    " messages.extracted_text, ''), 100000), '[[:punct:]]+', ' ', 'g')))"
)

# Column weights for SQLite's bm25(): sender, recipients, subject, body (the FTS5 column order).
_BM25 = "bm25(message_search, 4.0, 2.0, 8.0, 1.0)"
# PostgreSQL ts_rank weights {D, C, B, A}: body, recipients, sender, subject, as above.
_TS_WEIGHTS = "'{0.1, 0.2, 0.4, 0.8}'::float4[]"

_TOKEN = re.compile(r"[^\W_]+")
_TERM = re.compile(r'(-?)"([^"]*)"?|(-?)(\S+)')
MAX_TERMS = 16


def tokens(text: str) -> list[str]:
    """The indexed tokens of ``text``: what both backends' tokenizers make of it."""
    return [t.lower() for t in _TOKEN.findall(text)]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed search: every phrase in `include` must occur, no phrase in `exclude` may.

    A phrase is a tuple of adjacent tokens: a word (`invoice`), a word with punctuation
    (`alice@example.com` -> alice example com) or a quoted phrase (`"see you soon"`).
    A leading `-` excludes.
    """

    include: tuple[tuple[str, ...], ...]
    exclude: tuple[tuple[str, ...], ...] = ()

    @property
    def words(self) -> frozenset[str]:
        return frozenset(t for phrase in self.include for t in phrase)

    def fts5(self) -> str:
        # Tokens are letters and digits only, so quoting cannot be escaped out of.
        text = " AND ".join('"' + " ".join(p) + '"' for p in self.include)
        for phrase in self.exclude:
            text += ' NOT "' + " ".join(phrase) + '"'
        return text

    def tsquery(self) -> str:
        def phrase(p: tuple[str, ...]) -> str:
            return "(" + " <-> ".join("'" + t + "'" for t in p) + ")"

        parts = [phrase(p) for p in self.include] + ["!" + phrase(p) for p in self.exclude]
        return " & ".join(parts)


def parse(q: str) -> Query | None:
    """The query, or None when it holds no searchable word."""
    include: list[tuple[str, ...]] = []
    exclude: list[tuple[str, ...]] = []
    for m in _TERM.finditer(q):
        negated = bool(m.group(1) or m.group(3))
        phrase = tuple(tokens(m.group(2) if m.group(2) is not None else m.group(4)))
        if phrase and len(include) + len(exclude) < MAX_TERMS:
            (exclude if negated else include).append(phrase)
    if not include:
        return None
    return Query(tuple(include), tuple(exclude))


@dataclass(slots=True)
class SearchFilter:
    inbox_id: str
    organization_id: str
    exclude_labels: list[str] = field(default_factory=list)
    before: datetime | None = None
    after: datetime | None = None
    thread_ids: list[str] | None = None  # only messages of these threads


_HIT_COLUMNS = [c for c in messages.c if c.name not in ("html", "extracted_html")]


def _matching(conn: AsyncConnection, query: Query, flt: SearchFilter) -> tuple[Any, sa.ColumnElement[Any]]:
    """The FROM/WHERE of matching messages and the rank expression (smaller ranks first)."""
    if conn.dialect.name == "sqlite":
        fts = sa.table("message_search")
        stmt = (
            sa.select()
            .select_from(messages.join(fts, sa.text("message_search.rowid = messages.rowid")))
            .where(sa.text("message_search MATCH :fts").bindparams(fts=query.fts5()))
        )
        rank: sa.ColumnElement[Any] = sa.literal_column(_BM25)
    else:
        vector: sa.ColumnElement[Any] = sa.literal_column(SEARCH_VECTOR)
        tsq = sa.func.to_tsquery(sa.literal_column("'simple'::regconfig"), sa.literal(query.tsquery(), sa.Text))
        stmt = sa.select().select_from(messages).where(vector.op("@@")(tsq))
        rank = -sa.func.ts_rank(sa.literal_column(_TS_WEIGHTS), vector, tsq)
    stmt = stmt.where(messages.c.inbox_id == flt.inbox_id, messages.c.organization_id == flt.organization_id)
    for label in flt.exclude_labels:
        stmt = stmt.where(sa.not_(labelset.has(messages.c.labels, label)))
    if flt.before is not None:
        stmt = stmt.where(messages.c.timestamp < flt.before)
    if flt.after is not None:
        stmt = stmt.where(messages.c.timestamp > flt.after)
    if flt.thread_ids is not None:
        stmt = stmt.where(messages.c.thread_id.in_(flt.thread_ids))
    return stmt, rank


async def search_messages(
    conn: AsyncConnection, query: Query, flt: SearchFilter, *, limit: int, offset: int
) -> list[Any]:
    """Up to ``limit + 1`` matching message rows (without html), best match first."""
    base, rank = _matching(conn, query, flt)
    stmt = base.add_columns(*_HIT_COLUMNS).order_by(rank, messages.c.id.desc()).limit(limit + 1).offset(offset)
    return list((await conn.execute(stmt)).all())


async def search_threads(
    conn: AsyncConnection, query: Query, flt: SearchFilter, thread_exclude: list[str], *, limit: int, offset: int
) -> list[Any]:
    """Up to ``limit + 1`` thread rows holding a matching message, best match first.

    A thread ranks as its best matching message. ``thread_exclude`` hides threads by their
    labels, as thread listings do.
    """
    base, rank = _matching(conn, query, flt)
    # FTS5's bm25() cannot be an aggregate's argument: rank the matches in a subquery, then
    # group them. On SQLite, LIMIT -1 (no limit) keeps the planner from flattening it back.
    ranked_select = base.add_columns(messages.c.thread_id, rank.label("rank"))
    if conn.dialect.name == "sqlite":
        ranked_select = ranked_select.limit(-1)
    ranked = ranked_select.subquery("ranked")
    hits = (
        sa.select(ranked.c.thread_id, sa.func.min(ranked.c.rank).label("rank"))
        .group_by(ranked.c.thread_id)
        .subquery("hits")
    )
    stmt = sa.select(threads).select_from(threads.join(hits, hits.c.thread_id == threads.c.id))
    for label in thread_exclude:
        stmt = stmt.where(sa.not_(labelset.has(threads.c.labels, label)))
    stmt = stmt.order_by(hits.c.rank, threads.c.last_pk.desc()).limit(limit + 1).offset(offset)
    return list((await conn.execute(stmt)).all())
