"""Everything a send needs from the store, read in one transaction: inbox, domain, DKIM keys, lists,
recipients, and the recent sends its caps count."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from agentpost.model import id_floor, id_time_ms
from agentpost.store import lists as list_store
from agentpost.store.dkim_keys import StoredKey
from agentpost.store.lists import ListSet
from agentpost.store.prepared import Prepared
from agentpost.store.tables import dkim_keys, domains, inboxes, messages, suppressions


@dataclass(frozen=True, slots=True)
class Sender:
    """What a send needs of its inbox: it changes seldom, so the service layer keeps it a while."""

    inbox: Any  # the inbox row
    domain: Any | None  # the inbox's domain row in the inbox's organisation
    keys: list[StoredKey]  # the domain's active DKIM keys, RSA first
    lists: ListSet = list_store.EMPTY  # the inbox's and its organisation's send lists


@dataclass(frozen=True, slots=True)
class Window:
    """The newest sends in one capped window, at most the cap of them: ``count`` and when the oldest
    of those was made (Unix ms), which is when the window next has room."""

    count: int
    oldest_ms: int


@dataclass(frozen=True, slots=True)
class Caps:
    """What to count for a send: the caps it is under (None: not capped) and the reply's thread."""

    per_hour: int | None = None
    per_day: int | None = None
    per_thread_per_hour: int | None = None
    thread_id: str | None = None

    def __bool__(self) -> bool:
        return bool(self.per_hour or self.per_day or (self.per_thread_per_hour and self.thread_id))


@dataclass(frozen=True, slots=True)
class SendingFacts:
    sender: Sender | None  # None when the inbox does not exist
    receiving: dict[str, bool]  # recipient domain -> hosted here with inbound enabled (asked ones only)
    inboxes: set[str]  # recipient keys (lowercased addresses) that are inboxes here
    suppressed: set[str]  # recipient keys suppressed for this inbox or its organisation
    # "hour", "day", "thread" -> the window's recent sends; only the capped ones are counted.
    windows: dict[str, Window] = field(default_factory=dict)


# Built once: constructing a statement costs more than running it (SQLAlchemy memoizes the
# compiled form per statement object, so reusing the object skips construction and compilation).
_INBOX = sa.select(inboxes).where(inboxes.c.id == sa.bindparam("inbox_id"))
_DOMAIN = sa.select(domains).where(
    domains.c.organization_id == sa.bindparam("organization_id"), domains.c.domain == sa.bindparam("domain")
)
_KEYS = (
    sa.select(dkim_keys.c.selector, dkim_keys.c.algorithm, dkim_keys.c.private_enc, dkim_keys.c.public_txt)
    .where(dkim_keys.c.domain_id == sa.bindparam("domain_id"), dkim_keys.c.status == "active")
    .order_by(dkim_keys.c.algorithm.desc(), dkim_keys.c.created_at)
)
# One recipient per statement: an IN list of varying length is compiled anew for each length.
_RECEIVING = Prepared(
    sa.select(domains.c.domain).where(
        domains.c.domain == sa.bindparam("name"), domains.c.inbound_enabled == sa.bindparam("enabled")
    )
)
_INBOX_EXISTS = Prepared(sa.select(inboxes.c.id).where(inboxes.c.id == sa.bindparam("key")))
_SUPPRESSED = Prepared(
    sa.select(suppressions.c.address).where(
        suppressions.c.organization_id == sa.bindparam("organization_id"),
        suppressions.c.scope.in_([sa.bindparam("everywhere"), sa.bindparam("inbox_id")]),
        suppressions.c.address == sa.bindparam("key"),
    )
)


@dataclass(frozen=True, slots=True)
class SigningDomain:
    domain_id: str
    domain: str
    keys: list[StoredKey]  # active, RSA first (as Sender.keys)


@dataclass(frozen=True, slots=True)
class Primer:
    """What a starting process loads before its ports open (service/sending.prime)."""

    signing: list[SigningDomain]  # hosted domains with active DKIM keys, the newest first
    inbox_id: str | None  # any inbox, for one sending-facts read


def primer(conn: sa.Connection, limit: int) -> Primer:
    """Up to ``limit`` signing domains and any one inbox."""
    active = sa.select(dkim_keys.c.id).where(dkim_keys.c.domain_id == domains.c.id, dkim_keys.c.status == "active")
    rows = conn.execute(
        sa.select(domains.c.id, domains.c.domain)
        .where(active.exists())
        .order_by(domains.c.created_at.desc())
        .limit(limit)
    ).all()
    signing = [
        SigningDomain(domain_id, domain, [StoredKey(*r) for r in conn.execute(_KEYS, {"domain_id": domain_id})])
        for domain_id, domain in rows
    ]
    return Primer(signing, conn.execute(sa.select(inboxes.c.id).limit(1)).scalar())


def sender(conn: sa.Connection, inbox_id: str) -> Sender | None:
    inbox = conn.execute(_INBOX, {"inbox_id": inbox_id.lower()}).first()
    if inbox is None:
        return None
    domain = conn.execute(_DOMAIN, {"organization_id": inbox.organization_id, "domain": inbox.domain}).first()
    keys: list[StoredKey] = []
    if domain is not None:
        keys = [StoredKey(*r) for r in conn.execute(_KEYS, {"domain_id": domain.id})]
    lists = list_store.for_inbox_sync(conn, inbox.organization_id, inbox.id, ["send"])
    return Sender(inbox, domain, keys, lists)


# The newest sent messages of an inbox (or of one thread) since a time: message ids are
# time-ordered, so a window is an id range on the (inbox_id, id) index; LIMIT cap bounds the work.
_RECENT_SENT = (
    sa.select(messages.c.id)
    .where(
        messages.c.inbox_id == sa.bindparam("inbox_id"),
        messages.c.direction == "sent",
        messages.c.id >= sa.bindparam("since"),
    )
    .order_by(messages.c.id.desc())
    .limit(sa.bindparam("cap"))
)
_RECENT_IN_THREAD = (
    sa.select(messages.c.id)
    .where(
        messages.c.thread_id == sa.bindparam("thread_id"),
        messages.c.direction == "sent",
        messages.c.id >= sa.bindparam("since"),
    )
    .order_by(messages.c.id.desc())
    .limit(sa.bindparam("cap"))
)
_HOUR_MS = 3600 * 1000


def _window(conn: sa.Connection, statement: Any, params: dict[str, Any], cap: int, span_ms: int, now_ms: int) -> Window:
    ids = [r[0] for r in conn.execute(statement, {**params, "since": id_floor("msg_", now_ms - span_ms), "cap": cap})]
    return Window(len(ids), id_time_ms(ids[-1], "msg_") if ids else now_ms)


def windows(conn: sa.Connection, inbox_id: str, caps: Caps, now_ms: int) -> dict[str, Window]:
    """Count only what is capped: an inbox without caps costs no statement here."""
    found: dict[str, Window] = {}
    if caps.per_hour:
        found["hour"] = _window(conn, _RECENT_SENT, {"inbox_id": inbox_id}, caps.per_hour, _HOUR_MS, now_ms)
    if caps.per_day:
        found["day"] = _window(conn, _RECENT_SENT, {"inbox_id": inbox_id}, caps.per_day, 24 * _HOUR_MS, now_ms)
    if caps.per_thread_per_hour and caps.thread_id:
        params = {"thread_id": caps.thread_id}
        found["thread"] = _window(conn, _RECENT_IN_THREAD, params, caps.per_thread_per_hour, _HOUR_MS, now_ms)
    return found


def facts(
    conn: sa.Connection,
    inbox_id: str,
    recipient_keys: list[str],
    known_sender: Sender | None = None,
    known_receiving: dict[str, bool] | None = None,
    caps: Callable[[Any], Caps] | None = None,
    now_ms: int = 0,
) -> SendingFacts:
    """One read transaction (``Database.run_read``) for the whole send path: a send used to pay a
        thread hop per statement, which cost more than the statements. What the caller already knows
        (``known_sender``, ``known_receiving``) is not asked again. ``caps`` says, given the inbox row, which
    send caps to count (store/sending.py does not know the defaults)."""
    found = known_sender if known_sender is not None else sender(conn, inbox_id)
    if found is None:
        return SendingFacts(None, {}, set(), set())
    receiving = dict(known_receiving or {})
    for name in sorted({key.rpartition("@")[2] for key in recipient_keys}):
        if name not in receiving:
            receiving[name] = bool(_RECEIVING.rows(conn, {"name": name, "enabled": True}))
    hosted = {
        key
        for key in recipient_keys
        if receiving.get(key.rpartition("@")[2]) and _INBOX_EXISTS.rows(conn, {"key": key})
    }
    organization_id, inbox = found.inbox.organization_id, found.inbox.id
    blocked = {
        key
        for key in recipient_keys
        if _SUPPRESSED.rows(conn, {"organization_id": organization_id, "everywhere": "", "inbox_id": inbox, "key": key})
    }
    capped = caps(found.inbox) if caps is not None else Caps()
    counted = windows(conn, inbox, capped, now_ms) if capped else {}
    return SendingFacts(found, receiving, hosted, blocked, counted)
