"""Everything a send needs from the store, read in one transaction: inbox, domain, DKIM keys, recipients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentpost.store.dkim_keys import StoredKey
from agentpost.store.prepared import Prepared
from agentpost.store.tables import dkim_keys, domains, inboxes, suppressions


@dataclass(frozen=True, slots=True)
class Sender:
    """What a send needs of its inbox: it changes seldom, so the service layer keeps it a while."""

    inbox: Any  # the inbox row
    domain: Any | None  # the inbox's domain row in the inbox's organisation
    keys: list[StoredKey]  # the domain's active DKIM keys, RSA first


@dataclass(frozen=True, slots=True)
class SendingFacts:
    sender: Sender | None  # None when the inbox does not exist
    receiving: dict[str, bool]  # recipient domain -> hosted here with inbound enabled (asked ones only)
    inboxes: set[str]  # recipient keys (lowercased addresses) that are inboxes here
    suppressed: set[str]  # recipient keys suppressed for this inbox or its organisation


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


def sender(conn: sa.Connection, inbox_id: str) -> Sender | None:
    inbox = conn.execute(_INBOX, {"inbox_id": inbox_id.lower()}).first()
    if inbox is None:
        return None
    domain = conn.execute(_DOMAIN, {"organization_id": inbox.organization_id, "domain": inbox.domain}).first()
    keys: list[StoredKey] = []
    if domain is not None:
        keys = [StoredKey(*r) for r in conn.execute(_KEYS, {"domain_id": domain.id})]
    return Sender(inbox, domain, keys)


def facts(
    conn: sa.Connection,
    inbox_id: str,
    recipient_keys: list[str],
    known_sender: Sender | None = None,
    known_receiving: dict[str, bool] | None = None,
) -> SendingFacts:
    """One read transaction (``Database.run_read``) for the whole send path: a send used to pay a
    thread hop per statement, which cost more than the statements. What the caller already knows
    (``known_sender``, ``known_receiving``) is not asked again."""
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
    return SendingFacts(found, receiving, hosted, blocked)
