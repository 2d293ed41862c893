"""Searching an inbox's mail: messages and threads by relevance, with highlighted fragments.

Highlights are cut here, in Python, from the stored fields rather than by the database
(FTS5 snippet() needs stored content; ts_headline tokenizes addresses differently from the
index): one highlighter makes both backends answer byte for byte alike.
"""

from __future__ import annotations

import re
from typing import Any

from agentpost import schemas
from agentpost.errors import BadRequest, Invalid
from agentpost.service.auth import Principal
from agentpost.service.context import Context
from agentpost.service.mail import Listing, inbox_row_checked, listing_filter
from agentpost.store import messages as message_store
from agentpost.store import search as search_store
from agentpost.store.pages import decode_token, encode_token

MAX_LIMIT = 100  # AgentMail: search `limit` cannot exceed 100
DEFAULT_LIMIT = 20
MAX_QUERY = 1000  # characters
MAX_OFFSET = 10_000  # relevance pages are offsets; deep paging re-ranks everything before it
FRAGMENT = 60  # characters of context either side of a matched word in a body fragment
MAX_FRAGMENTS = 3  # per field
THREAD_HITS = 200  # matching messages read per page of threads, for the threads' highlights

_WORD = re.compile(r"[^\W_]+")


def _mark(text: str, words: frozenset[str]) -> str | None:
    """``text`` with every matched word wrapped in ``**``, or None when no word matched."""
    hit = False

    def wrap(m: re.Match[str]) -> str:
        nonlocal hit
        if m.group(0).lower() in words:
            hit = True
            return "**" + m.group(0) + "**"
        return m.group(0)

    marked = _WORD.sub(wrap, text)
    return marked if hit else None


def _fragments(text: str, words: frozenset[str]) -> list[str]:
    """Up to MAX_FRAGMENTS marked excerpts of a long text around its matched words."""
    out: list[str] = []
    end_of_last = 0
    for m in _WORD.finditer(text):
        if m.start() < end_of_last or m.group(0).lower() not in words:
            continue
        start = max(0, m.start() - FRAGMENT, end_of_last)
        stop = min(len(text), m.end() + FRAGMENT)
        # Cut at whitespace so no fragment starts or ends inside a word.
        if start > 0:
            space = text.find(" ", start, m.start())
            start = space + 1 if space >= 0 else start
        if stop < len(text):
            space = text.rfind(" ", m.end(), stop)
            stop = space if space >= 0 else stop
        piece = " ".join(text[start:stop].split())
        marked = _mark(piece, words)
        if marked is not None:
            out.append(("…" if start > 0 else "") + marked + ("…" if stop < len(text) else ""))
        end_of_last = stop
        if len(out) == MAX_FRAGMENTS:
            break
    return out


def _highlight_into(acc: dict[str, list[str]], row: Any, words: frozenset[str]) -> None:
    def add(field: str, values: list[str]) -> None:
        bucket = acc.setdefault(field, [])
        for value in values:
            if value not in bucket and len(bucket) < MAX_FRAGMENTS:
                bucket.append(value)

    sender = _mark(row.header_from or "", words)
    if sender:
        add("from", [sender])
    recipients = [m for a in [*(row.to or []), *(row.cc or []), *(row.bcc or [])] if (m := _mark(a, words))]
    if recipients:
        add("recipients", recipients)
    subject = _mark(row.subject or "", words)
    if subject:
        add("subject", [subject])
    body = _fragments(row.text or row.extracted_text or "", words)
    if body:
        add("text", body)


def _highlights(acc: dict[str, list[str]]) -> schemas.SearchHighlights | None:
    present = {k: v for k, v in acc.items() if v}
    return schemas.SearchHighlights.model_validate(present) if present else None


def _parse(text: str) -> search_store.Query:
    if len(text) > MAX_QUERY:
        raise Invalid(f"q is longer than {MAX_QUERY} characters", [{"path": "q", "message": "too long"}])
    query = search_store.parse(text)
    if query is None:
        raise Invalid("q holds no word to search for", [{"path": "q", "message": "no searchable word"}])
    return query


def _offset(token: str | None) -> int:
    raw = decode_token(token)
    if raw is None:
        return 0
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        raise BadRequest("page_token is not valid", fix="Pass next_page_token from a previous response.")
    return int(raw)


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


async def _prepare(
    ctx: Context, who: Principal, inbox_id: str, q: Listing, text: str
) -> tuple[search_store.Query, search_store.SearchFilter, list[str], int, int]:
    who.require("message_read")
    who.check_inbox(inbox_id)
    query, n, offset = _parse(text), _limit(q.limit), _offset(q.page_token)
    async with ctx.db.read() as conn:
        await inbox_row_checked(conn, who, inbox_id)
    # The listing defaults: spam, blocked, unauthenticated and trash stay hidden unless asked
    # for with include_* (and the key may read them).
    exclude = listing_filter(who, q).exclude_labels
    flt = search_store.SearchFilter(
        inbox_id=inbox_id.lower(),
        organization_id=who.organization_id,
        exclude_labels=exclude,
        before=q.before,
        after=q.after,
    )
    return query, flt, exclude, n, offset


def _next_token(rows: list[Any], n: int, offset: int) -> str | None:
    return encode_token(str(offset + n)) if len(rows) > n and offset + n <= MAX_OFFSET else None


async def search_messages(
    ctx: Context, who: Principal, inbox_id: str, q: Listing, text: str
) -> schemas.SearchMessagesResponse:
    query, flt, _, n, offset = await _prepare(ctx, who, inbox_id, q, text)
    async with ctx.db.read() as conn:
        rows = await search_store.search_messages(conn, query, flt, limit=n, offset=offset)
    items = []
    for row in rows[:n]:
        acc: dict[str, list[str]] = {}
        _highlight_into(acc, row, query.words)
        item = message_store.to_item(row)
        items.append(schemas.SearchMessageItem(**item.model_dump(by_alias=False), highlights=_highlights(acc)))
    return schemas.SearchMessagesResponse(
        count=len(items), limit=n, next_page_token=_next_token(rows, n, offset), messages=items
    )


async def search_threads(
    ctx: Context, who: Principal, inbox_id: str, q: Listing, text: str
) -> schemas.SearchThreadsResponse:
    query, flt, exclude, n, offset = await _prepare(ctx, who, inbox_id, q, text)
    async with ctx.db.read() as conn:
        rows = await search_store.search_threads(conn, query, flt, exclude, limit=n, offset=offset)
        page = rows[:n]
        flt.thread_ids = [r.id for r in page]
        hits = await search_store.search_messages(conn, query, flt, limit=THREAD_HITS, offset=0) if page else []
    per_thread: dict[str, dict[str, list[str]]] = {r.id: {} for r in page}
    for hit in hits:
        _highlight_into(per_thread[hit.thread_id], hit, query.words)
    items = [
        schemas.SearchThreadItem(
            **message_store.to_thread_item(r).model_dump(by_alias=False), highlights=_highlights(per_thread[r.id])
        )
        for r in page
    ]
    return schemas.SearchThreadsResponse(
        count=len(items), limit=n, next_page_token=_next_token(rows, n, offset), threads=items
    )
