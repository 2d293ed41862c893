"""Allow/block list entries per organisation or inbox: add, get, list, remove, and which entry decides an address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentpost.model import utcnow
from agentpost.store.tables import list_entries, messages

Decision = Literal["allow", "block"]


@dataclass(frozen=True, slots=True)
class ListSet:
    """The entries that apply to one inbox (its own and its organisation's), for some directions.

    ``decide`` answers with the most specific matching scope: inbox address, inbox domain,
    organisation address, organisation domain. At the same specificity block beats allow. None
    means no entry names the address; the inbox's ``default_deny`` then decides.
    """

    # (inbox-scoped, direction, list type, entry)
    entries: frozenset[tuple[bool, str, str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def has(self, direction: str) -> bool:
        return any(entry[1] == direction for entry in self.entries)

    def decide(self, direction: str, address: str) -> Decision | None:
        key = address.lower()
        domain = key.rpartition("@")[2]
        for inbox_scope, name in ((True, key), (True, domain), (False, key), (False, domain)):
            if (inbox_scope, direction, "block", name) in self.entries:
                return "block"
            if (inbox_scope, direction, "allow", name) in self.entries:
                return "allow"
        return None

    @classmethod
    def of(cls, rows: list[Any]) -> ListSet:
        """From rows of (scope, direction, list_type, entry)."""
        return cls(frozenset((bool(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows))


EMPTY = ListSet()

_COLUMNS = (list_entries.c.scope, list_entries.c.direction, list_entries.c.list_type, list_entries.c.entry)
# Built once (see store/sending.py): the send path reads it when an inbox's facts are not cached.
_FOR_INBOX = sa.select(*_COLUMNS).where(
    list_entries.c.organization_id == sa.bindparam("organization_id"),
    list_entries.c.scope.in_([sa.bindparam("everywhere"), sa.bindparam("inbox_id")]),
    list_entries.c.direction.in_(sa.bindparam("directions", expanding=True)),
)


def for_inbox_sync(conn: sa.Connection, organization_id: str, inbox_id: str, directions: list[str]) -> ListSet:
    params = {"organization_id": organization_id, "everywhere": "", "inbox_id": inbox_id, "directions": directions}
    return ListSet.of(list(conn.execute(_FOR_INBOX, params)))


async def for_inbox(conn: AsyncConnection, organization_id: str, inbox_id: str, directions: list[str]) -> ListSet:
    params = {"organization_id": organization_id, "everywhere": "", "inbox_id": inbox_id, "directions": directions}
    return ListSet.of(list((await conn.execute(_FOR_INBOX, params)).all()))


def _key(organization_id: str, scope: str, direction: str, list_type: str) -> list[Any]:
    return [
        list_entries.c.organization_id == organization_id,
        list_entries.c.scope == scope,
        list_entries.c.direction == direction,
        list_entries.c.list_type == list_type,
    ]


async def add(
    conn: AsyncConnection,
    organization_id: str,
    scope: str,
    direction: str,
    list_type: str,
    entry: str,
    entry_type: str,
    reason: str | None,
) -> Any:
    """Add an entry, or return the one already there (adding twice is not an error)."""
    found = await get(conn, organization_id, scope, direction, list_type, entry)
    if found is not None:
        return found
    await conn.execute(
        list_entries.insert().values(
            organization_id=organization_id,
            scope=scope,
            direction=direction,
            list_type=list_type,
            entry=entry,
            entry_type=entry_type,
            reason=reason,
            created_at=utcnow(),
        )
    )
    return await get(conn, organization_id, scope, direction, list_type, entry)


async def get(
    conn: AsyncConnection, organization_id: str, scope: str, direction: str, list_type: str, entry: str
) -> Any | None:
    query = sa.select(list_entries).where(
        *_key(organization_id, scope, direction, list_type), list_entries.c.entry == entry
    )
    return (await conn.execute(query)).first()


async def page(
    conn: AsyncConnection,
    organization_id: str,
    scope: str,
    direction: str,
    list_type: str,
    limit: int,
    after: str | None,
) -> list[Any]:
    """Entries ascending (the SDK: "ordered by entry ascending"), ``limit + 1`` to tell if more follow."""
    query = sa.select(list_entries).where(*_key(organization_id, scope, direction, list_type))
    if after:
        query = query.where(list_entries.c.entry > after)
    return list((await conn.execute(query.order_by(list_entries.c.entry).limit(limit + 1))).all())


async def remove(
    conn: AsyncConnection, organization_id: str, scope: str, direction: str, list_type: str, entry: str
) -> bool:
    result = await conn.execute(
        list_entries.delete().where(*_key(organization_id, scope, direction, list_type), list_entries.c.entry == entry)
    )
    return bool(result.rowcount)


async def remove_inbox(conn: AsyncConnection, organization_id: str, inbox_id: str) -> None:
    await conn.execute(
        list_entries.delete().where(list_entries.c.organization_id == organization_id, list_entries.c.scope == inbox_id)
    )


async def answers_sent(conn: AsyncConnection, inbox_id: str, message_ids: list[str]) -> bool:
    """Whether any of ``message_ids`` (a received message's In-Reply-To and References) names a
    message this inbox sent: what makes received mail a reply for the ``reply`` lists."""
    if not message_ids:
        return False
    query = (
        sa.select(messages.c.id)
        .where(
            messages.c.inbox_id == inbox_id,
            messages.c.message_id.in_(message_ids),
            messages.c.direction == "sent",
        )
        .limit(1)
    )
    return (await conn.execute(query)).first() is not None
