"""Who is calling: API key -> Principal, and the scope checks every use case applies."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agentpost.errors import Forbidden, NotFound, Unauthorized
from agentpost.model import utcnow
from agentpost.service.context import Context
from agentpost.store import orgs


@dataclass(frozen=True, slots=True)
class Principal:
    organization_id: str
    api_key_id: str | None
    inbox_id: str | None  # set: the key sees only this inbox
    permissions: dict[str, bool] | None

    def can(self, permission: str) -> bool:
        # AgentMail semantics: no permissions object means every permission.
        if self.permissions is None:
            return True
        return bool(self.permissions.get(permission, False))

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(f"this API key lacks the {permission} permission")

    def sees_inbox(self, inbox_id: str) -> bool:
        return self.inbox_id is None or self.inbox_id == inbox_id.lower()

    def owns(self, row: Any, inbox_id: str | None = None) -> bool:
        """Whether a stored row (with organization_id and inbox_id) is this key's to see, and in
        ``inbox_id`` when the request named one."""
        return (
            row is not None
            and row.organization_id == self.organization_id
            and self.sees_inbox(row.inbox_id)
            and (inbox_id is None or row.inbox_id == inbox_id.lower())
        )

    def check_inbox(self, inbox_id: str) -> None:
        # 404, not 403: a key must not learn that an inbox outside its scope exists.
        if not self.sees_inbox(inbox_id):
            raise NotFound("inbox not found")

    def require_org(self) -> None:
        if self.inbox_id is not None:
            raise Forbidden("this API key is scoped to one inbox")


# A key's record is reused this long (seconds): every API request authenticates, and a read
# per request showed up in the send path's profile. A deleted key is forgotten at once by every
# process on this host (forget_keys); on another host sharing the database it stops working
# within this time.
PRINCIPAL_TTL = 5.0


async def authenticate(ctx: Context, key: str | None) -> Principal:
    if not key:
        raise Unauthorized("missing API key", fix="Send Authorization: Bearer <api key>.")
    digest = orgs.hash_key(key.strip())
    now = time.monotonic()
    epoch = ctx.directory_epoch()
    if epoch != ctx.principals_epoch:  # a key was deleted, maybe by another process
        ctx.principals.clear()
        ctx.principals_epoch = epoch
    cached = ctx.principals.get(digest)
    if cached is not None and now - cached[0] < PRINCIPAL_TTL:
        record = cached[1]
    else:
        found = await _look_up(ctx, digest)
        if found is None:
            ctx.principals.pop(digest, None)
            raise Unauthorized("invalid API key")  # unknown keys are never cached
        record = found
        if len(ctx.principals) > 10_000:
            ctx.principals.clear()
        ctx.principals[digest] = (now, record)
    if record.expires_at is not None and record.expires_at.replace(tzinfo=record.expires_at.tzinfo) < utcnow():
        raise Unauthorized("API key expired")
    return Principal(record.organization_id, record.api_key_id, record.inbox_id, record.permissions)


async def _look_up(ctx: Context, digest: str) -> orgs.KeyRecord | None:
    """One read per key at a time: requests that find the same key uncached (a burst after start,
    or when its record expires under concurrent load) wait for the read already under way
    instead of each running its own."""
    return await ctx.principal_reads.call(digest, lambda: ctx.db.run_read(orgs.find_key_by_hash_sync, digest))


def forget_keys(ctx: Context) -> None:
    """API keys changed (deleted, or their inbox deleted): drop cached key records everywhere."""
    ctx.principals.clear()
    ctx.directory_changed()
