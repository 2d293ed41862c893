"""Everything a send needs from the store, read in one transaction: inbox, domain, DKIM keys, recipients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentpost.store.dkim_keys import StoredKey
from agentpost.store.tables import dkim_keys, domains, inboxes, suppressions


@dataclass(frozen=True, slots=True)
class SendingFacts:
    inbox: Any | None  # the inbox row, None when it does not exist
    domain: Any | None  # the inbox's domain row in the inbox's organisation
    keys: list[StoredKey]  # the domain's active DKIM keys, RSA first
    receiving_domains: set[str]  # recipient domains hosted here with inbound enabled
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
_RECEIVING = sa.select(domains.c.domain).where(
    domains.c.domain.in_(sa.bindparam("names", expanding=True)), domains.c.inbound_enabled.is_(True)
)
_INBOXES = sa.select(inboxes.c.id).where(inboxes.c.id.in_(sa.bindparam("keys", expanding=True)))
_SUPPRESSED = sa.select(suppressions.c.address).where(
    suppressions.c.organization_id == sa.bindparam("organization_id"),
    suppressions.c.scope.in_(sa.bindparam("scopes", expanding=True)),
    suppressions.c.address.in_(sa.bindparam("keys", expanding=True)),
)


def facts(conn: sa.Connection, inbox_id: str, recipient_keys: list[str]) -> SendingFacts:
    """One read transaction (``Database.run_read``) for the whole send path: a send used to pay a
    thread hop per statement, which cost more than the statements."""
    inbox = conn.execute(_INBOX, {"inbox_id": inbox_id.lower()}).first()
    if inbox is None:
        return SendingFacts(None, None, [], set(), set(), set())
    domain = conn.execute(_DOMAIN, {"organization_id": inbox.organization_id, "domain": inbox.domain}).first()
    keys: list[StoredKey] = []
    if domain is not None:
        keys = [StoredKey(*r) for r in conn.execute(_KEYS, {"domain_id": domain.id})]
    names = sorted({key.rpartition("@")[2] for key in recipient_keys})
    receiving: set[str] = set()
    hosted: set[str] = set()
    blocked: set[str] = set()
    if names:
        receiving = {str(r[0]) for r in conn.execute(_RECEIVING, {"names": names})}
    local = [key for key in recipient_keys if key.rpartition("@")[2] in receiving]
    if local:
        hosted = {str(r[0]) for r in conn.execute(_INBOXES, {"keys": local})}
    if recipient_keys:
        params = {"organization_id": inbox.organization_id, "scopes": ["", inbox.id], "keys": recipient_keys}
        blocked = {str(r[0]) for r in conn.execute(_SUPPRESSED, params)}
    return SendingFacts(inbox, domain, keys, receiving, hosted, blocked)
